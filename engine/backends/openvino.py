"""OpenVINO backend: the graph's ONNX compiled for the CPU, in bf16 where the CPU computes it natively
and the accuracy guard (``accuracy.py``) has cleared every network in the graph.

bf16 (AVX-512 BF16 or AMX) roughly doubles the road graph's speed on such CPUs against fp32; else
OpenVINO runs fp32. Compiled models are cached (OpenVINO's own model cache) beside the
weights' cache, so a later start compiles nothing. Denormals are flushed, as on ONNX Runtime.

Streams: by default OpenVINO's throughput mode computes several frames at once, each on its own
threads (``submit``/``collect``, one infer request per stream). On 2 cores that is 2 one-thread
streams: +13 % frames a second on the road graph against one two-thread request, and a stream
that loses its core to decoding or encoding delays only its own frame, where one request's
threads all wait at every layer for the slowest. ``streams=1`` is the latency mode (live feeds).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from segengine.backends.accuracy import bf16_keeps_accuracy
from segengine.backends.base import BackendInfo, BackendOptions
from segengine.backends.probe import GpuEnvironment, cpu_isa, has_bf16
from segengine.errors import BackendError
from segengine.graph.spec import GraphSpec
from segengine.models import zoo

_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackend(BackendInfo):
    name: ClassVar[str] = "openvino"
    graph_format: ClassVar[str] = "onnx"
    precisions: ClassVar[tuple[str, ...]] = ("bf16", "fp32")

    def __init__(self, graph: Path, spec: GraphSpec, options: BackendOptions | None = None) -> None:
        import openvino as ov

        options = options or BackendOptions()
        if options.device not in (None, "cpu"):
            raise BackendError(f"openvino runs on the CPU here, not on {options.device!r}")
        self.precision = self.precision_for(options, cpu_isa(), tuple(o.model for o in spec.outputs))
        self.spec = spec
        cache = (options.dirs or zoo.WeightDirs.from_env()).cache.parent / "openvino"
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision], "CACHE_DIR": str(cache),
                                  "CPU_DENORMALS_OPTIMIZATION": True,
                                  "PERFORMANCE_HINT": "LATENCY" if options.streams == 1 else "THROUGHPUT"}
        if options.streams > 1:
            config["NUM_STREAMS"] = options.streams
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            compiled = ov.Core().compile_model(str(graph), "CPU", config)
        except RuntimeError as exc:  # OpenVINO's own errors for graphs it cannot read
            raise BackendError(f"{graph}: OpenVINO cannot compile this graph ({exc})") from exc
        self.depth = max(1, int(compiled.get_property("NUM_STREAMS")))
        self._requests: list[Any] | None = [compiled.create_infer_request() for _ in range(self.depth)]
        self._pending: deque[Any] = deque()  # started, not yet collected, oldest first
        self._next = 0  # the request the next frame starts on (round robin: at most depth in flight)
        # A port can carry several names (OpenVINO folds a bool→uint8 cast into its producer, whose
        # name comes along): the graph's own output name is the one the spec knows.
        wanted = set(spec.tensor_names)
        self._outputs = [(next((n for n in sorted(port.get_names()) if n in wanted), port.get_any_name()), port)
                         for port in compiled.outputs]
        missing = set(spec.tensor_names) - {name for name, _ in self._outputs}
        if missing:
            raise BackendError(f"{graph}: its spec names outputs the graph lacks ({', '.join(sorted(missing))})")

    @classmethod
    def precision_for(cls, options: BackendOptions, isa: tuple[str, ...], models: tuple[str, ...]) -> str:
        """auto: bf16 where the CPU has it and the guard cleared every model; asked for where the CPU
        lacks it, bf16 is refused."""
        if options.precision == "auto":
            return "bf16" if has_bf16(isa) and bf16_keeps_accuracy(models) else "fp32"
        precision = cls.check_precision(options)
        if precision == "bf16" and not has_bf16(isa):
            raise BackendError("bf16 needs a CPU with AVX-512 BF16 or AMX; this one has "
                               f"{', '.join(isa) or 'neither'}: use --precision fp32")
        return precision

    @classmethod
    def available(cls, env: GpuEnvironment) -> str | None:
        return None if env.openvino_version else "OpenVINO is not installed (`pip install openvino`)"

    @classmethod
    def speed(cls, env: GpuEnvironment, models: tuple[str, ...] = ()) -> int:
        # The road graph on 2 cores (AMD EPYC, AVX-512 BF16): bf16 1.7x ONNX Runtime; fp32 within +-15 % of
        # it (two runs disagreed), so without bf16 the long-proven ONNX Runtime stays first.
        return 15 if env.cpu_bf16 and bf16_keeps_accuracy(models) else 5

    @classmethod
    def where(cls, env: GpuEnvironment) -> str:
        return (f"OpenVINO {env.openvino_version} on the CPU, bf16 for networks the accuracy guard cleared"
                if env.cpu_bf16 else f"OpenVINO {env.openvino_version} on the CPU in fp32")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._pending:  # its outputs would be an earlier frame's
            raise BackendError("openvino has frames in flight: collect them before calling infer")
        self.submit(batch)
        return self.collect()

    def submit(self, frame: np.ndarray) -> None:
        if self._requests is None:
            raise BackendError("backend is closed")
        if len(self._pending) >= self.depth:
            raise BackendError(f"openvino holds {self.depth} frames in flight already: collect one first")
        request = self._requests[self._next]
        self._next = (self._next + 1) % self.depth
        batch = frame[None] if frame.ndim == 3 else frame
        request.start_async({0: np.ascontiguousarray(batch)})  # copies the input: the caller may reuse it
        self._pending.append(request)

    def collect(self) -> dict[str, np.ndarray]:
        if self._requests is None:
            raise BackendError("backend is closed")
        if not self._pending:
            raise BackendError("openvino has no frame in flight to collect")
        request = self._pending.popleft()
        request.wait()
        # Copies: the request's buffers are reused by a later frame, the caller keeps these.
        return {name: request.get_tensor(port).data.copy() for name, port in self._outputs}

    def close(self) -> None:
        if self._requests is not None:
            for request in self._pending:
                request.wait()  # never free a request OpenVINO is still computing
        self._requests = None
        self._pending.clear()
