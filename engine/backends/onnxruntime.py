"""ONNX Runtime backend: the CPU path, here and in CI."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from segengine.backends.base import BackendInfo, BackendOptions
from segengine.backends.probe import GpuEnvironment
from segengine.errors import BackendError
from segengine.graph.spec import GraphSpec


class OnnxRuntimeBackend(BackendInfo):
    name: ClassVar[str] = "onnxruntime"
    graph_format: ClassVar[str] = "onnx"

    def __init__(self, graph: Path, spec: GraphSpec, options: BackendOptions | None = None, *,
                 spinning: bool = False, denormals_as_zero: bool = True) -> None:
        options = options or BackendOptions()
        if options.device not in (None, "cpu"):
            raise BackendError(f"onnxruntime runs on the CPU here, not on {options.device!r}")
        self.check_precision(options)
        self.spec = spec
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        # Subnormal floats (TwinLiteNet's weights and activations are full of them) take x86's slow
        # microcode path; flushed to zero they cost nothing and change no output that we read.
        session_options.add_session_config_entry("session.set_denormal_as_zero", "1" if denormals_as_zero else "0")
        # By default idle pool threads sleep instead of spinning: in the pipeline, decoding,
        # rendering and encoding share the CPU with inference, and spinning takes their time
        # (measured: end to end +4 % on 2 cores, though the graph alone runs 10 % faster spinning).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(graph), session_options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise BackendError(f"{graph}: ONNX Runtime cannot load this graph ({exc})") from exc
        self.input_name = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]
        missing = set(spec.tensor_names) - set(self.output_names)
        if missing:
            raise BackendError(f"{graph}: its spec names outputs the graph lacks ({', '.join(sorted(missing))})")

    @classmethod
    def speed(cls, env: GpuEnvironment, models: tuple[str, ...] = ()) -> int:
        return 10

    @classmethod
    def where(cls, env: GpuEnvironment) -> str:
        return "ONNX Runtime on the CPU" + ("" if env.has_cuda else f" (no CUDA GPU: {env.no_gpu_reason()})")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch``: uint8 B×H×W×3 (B up to the spec's max batch) or H×W×3 RGB → the graph's outputs by name."""
        if self._session is None:
            raise BackendError("backend is closed")
        batch = batch[None] if batch.ndim == 3 else batch
        self.spec.check_batch(len(batch))
        outputs = self._session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch)})
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self._session = None
