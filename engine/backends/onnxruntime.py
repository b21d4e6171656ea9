"""ONNX Runtime backend: the CPU path, here and in CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from segengine.errors import BackendError
from segengine.graph.compose import read_description


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, *, providers: list[str] | None = None, threads: int = 0,
                 spinning: bool = False) -> None:
        path = Path(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and OSError alike
            raise BackendError(f"{path}: not a readable ONNX file ({exc})") from exc
        self.description = read_description(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # By default idle pool threads sleep instead of spinning: in the pipeline, decoding,
        # rendering and encoding share the CPU with inference, and spinning takes their time
        # (measured: end to end +4 % on 2 cores, though the graph alone runs 10 % faster spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                model.SerializeToString(), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise BackendError(f"{path}: ONNX Runtime cannot load this graph ({exc})") from exc
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """``frame``: uint8 H×W×3 RGB or 1×H×W×3 → the graph's outputs by name."""
        if self._session is None:
            raise BackendError("backend is closed")
        batch = frame[None] if frame.ndim == 3 else frame
        outputs = self._session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch)})
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self._session = None
