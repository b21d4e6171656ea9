"""OpenVINO backend: the graph's ONNX compiled for the CPU, in bf16 where the CPU computes it natively
and the accuracy guard (``accuracy.py``) has cleared every network in the graph.

bf16 (AVX-512 BF16 or AMX) roughly doubles the road graph's speed on such CPUs against fp32; else
OpenVINO runs fp32. INT8 runs the model `segengine build --backend openvino --int8` quantised
(``openvino_int8.py``), its float parts in bf16 where bf16 is allowed, else fp32. Compiled models are
cached (OpenVINO's own model cache) beside the weights' cache, so a later start compiles nothing.
Denormals are flushed, as on ONNX Runtime.

Streams: by default OpenVINO's throughput mode computes several frames at once, each on its own
threads (``submit``/``collect``, one infer request per stream). On 2 cores that is 2 one-thread
streams: +13 % frames a second on the road graph against one two-thread request, and a stream
that loses its core to decoding or encoding delays only its own frame, where one request's
threads all wait at every layer for the slowest. ``streams=1`` is the latency mode (live feeds).
"""

from __future__ import annotations

from collections import deque
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from segengine.backends.accuracy import bf16_keeps_accuracy, int8_preferred
from segengine.backends.base import BackendInfo, BackendOptions
from segengine.backends.int8_cache import Found, Int8Cache
from segengine.backends.probe import GpuEnvironment, cpu_isa, has_bf16
from segengine.download import sha256_of
from segengine.errors import BackendError
from segengine.graph.spec import GraphSpec
from segengine.models import zoo

_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackend(BackendInfo):
    name: ClassVar[str] = "openvino"
    graph_format: ClassVar[str] = "onnx"
    precisions: ClassVar[tuple[str, ...]] = ("bf16", "fp32", "int8")
    # Its streams (frames in flight, a request per core group) beat batches on a CPU: road at 960x540
    # on 2 cores, fp32, 221 ms a frame at batch 1 with 2 streams, 243-293 at batch 4
    # (benchmarks/batch_scaling.py); and the static batch-1 graph is 6-9 % faster than a dynamic one.
    batching: ClassVar[bool] = False

    def __init__(self, graph: Path, spec: GraphSpec, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        if options.device not in (None, "cpu"):
            raise BackendError(f"openvino runs on the CPU here, not on {options.device!r}")
        dirs = options.dirs or zoo.WeightDirs.from_env()
        isa, models = cpu_isa(), tuple(o.model for o in spec.outputs)
        int8 = find_int8(graph, dirs) if options.precision in ("auto", "int8") else None
        self.precision = self.precision_for(options, isa, models, int8_built=int8 is not None)
        self.spec = spec
        model = str(graph)
        hint = _HINTS.get(self.precision, "")
        if self.precision == "int8":
            if int8 is None:
                raise BackendError(missing_int8_message(graph, spec))
            model = str(int8.xml)
            # What INT8 leaves in float (pre/post-processing, kept layers) runs bf16 where it is allowed.
            hint = "bf16" if has_bf16(isa) and bf16_keeps_accuracy(models) else "f32"
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "CACHE_DIR": str(dirs.cache.parent / "openvino"),
                                  "CPU_DENORMALS_OPTIMIZATION": True,
                                  "PERFORMANCE_HINT": "LATENCY" if options.streams == 1 else "THROUGHPUT"}
        if options.streams > 1:
            config["NUM_STREAMS"] = options.streams
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            compiled = core().compile_model(model, "CPU", config)
        except RuntimeError as exc:  # OpenVINO's own errors for graphs it cannot read
            raise BackendError(f"{model}: OpenVINO cannot compile this graph ({exc})") from exc
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
    def precision_for(cls, options: BackendOptions, isa: tuple[str, ...], models: tuple[str, ...], *,
                      int8_built: bool = False) -> str:
        """auto: INT8 where a model is built and the guard says it is faster than bf16 here and keeps
        accuracy; else bf16 where the CPU has it and the guard cleared every model; else fp32. Asked for
        where the CPU lacks it, bf16 is refused."""
        if options.precision == "auto":
            if int8_built and int8_preferred(models, isa):
                return "int8"
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
        batch = frame[None] if frame.ndim == 3 else frame
        self.spec.check_batch(len(batch))  # before a request is taken: a refused frame uses none
        request = self._requests[self._next]
        self._next = (self._next + 1) % self.depth
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
        # The requests and output ports hold the compiled model: drop them, so its memory (and the INT8
        # model's mapped .bin) is released now, not when this object is collected.
        self._requests = None
        self._pending.clear()
        self._outputs = []


@cache
def core() -> Any:
    """The process's one ``openvino.Core``. Each Core's CPU plugin swaps the thread's signal stack for its
    own and puts back, when it goes, the one it found: Cores whose lives overlap out of order (two
    backends closed first-opened-first) leave the thread on freed memory, and its next signal (Ctrl-C)
    crashes the process. One Core that lives as long as the process keeps that stack valid."""
    import openvino as ov

    return ov.Core()


def int8_folder(dirs: zoo.WeightDirs) -> Path:
    return dirs.cache.parent / "openvino-int8"


def find_int8(graph: Path, dirs: zoo.WeightDirs) -> Found | None:
    """The INT8 model `segengine build --backend openvino --int8` made of this graph, if any."""
    folder = int8_folder(dirs)
    if not folder.is_dir():
        return None
    found, _ = Int8Cache(folder).find(sha256_of(graph))
    return found


def missing_int8_message(graph: Path, spec: GraphSpec) -> str:
    from segengine.graph.compose import PRESETS

    h, w = spec.frame_size
    # A preset or zoo model is rebuilt by name; any other graph (the user's model's) by its cached file.
    named = spec.name in PRESETS or spec.name in zoo.FAMILIES
    target = f"{spec.name} --frame-size {w}x{h}" if named else str(graph)
    return (f"no INT8 model of this graph ({spec.name}, {w}x{h} frames) has been built: quantise it once on frames "
            f"from your own camera with `segengine build {target} --backend openvino --int8 --calib YOUR_VIDEO`, "
            "or run --precision bf16 / fp32")
