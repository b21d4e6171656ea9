"""The TensorRT-touching code, kept thin: build a serialized engine, load one, run one.

Imported only where TensorRT is installed (``registry``/``build`` check first). Everything
around it (cache keys and sidecars, calibration frames, progress, slot ownership, double
buffering) lives in CPU-tested modules; this file only translates to TensorRT's API (10.x:
``IProgressMonitor``, ``IInt8EntropyCalibrator2``, ``execute_async_v3``). Written against the
documented API; not run in this project's CI, which has no GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorrt as trt

from segengine.backends.build_progress import BuildProgress
from segengine.backends.calibration import CalibrationFeeder, CalibrationTable
from segengine.backends.cuda import Memory, Stream
from segengine.backends.engine_cache import ProfileEntry
from segengine.backends.int8_scope import keep_outside_networks_fp32
from segengine.backends.streamed import IOSpec, StreamedRuntime, TensorSpec
from segengine.errors import BackendError


def version() -> str:
    return str(trt.__version__)


def supports(precision: str) -> bool:
    """TensorRT 11 removed the weak-typing precision flags (FP16/INT8) and implicit calibration."""
    if precision == "fp16":
        return hasattr(trt.BuilderFlag, "FP16")
    if precision == "int8":
        return hasattr(trt.BuilderFlag, "INT8") and hasattr(trt, "IInt8EntropyCalibrator2")
    return True


class _Logger(trt.ILogger):
    """TensorRT's messages: warnings and errors kept for our error message, the rest dropped."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
            self.errors.append(msg)


class _Monitor(trt.IProgressMonitor):
    def __init__(self, progress: BuildProgress) -> None:
        trt.IProgressMonitor.__init__(self)
        self.progress = progress

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.progress.phase_start(phase_name, parent_phase, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        return self.progress.step_complete(phase_name, step)

    def phase_finish(self, phase_name: str) -> None:
        self.progress.phase_finish(phase_name)


def _calibrator(feeder: CalibrationFeeder, table: CalibrationTable) -> trt.IInt8EntropyCalibrator2:
    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return feeder.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            ptr = feeder.next_batch()
            return None if ptr is None else [ptr]

        def read_calibration_cache(self) -> bytes | None:
            return table.read()

        def write_calibration_cache(self, cache: object) -> None:
            table.write(bytes(memoryview(cache)))

    return Calibrator()


def build_serialized(onnx_path: Path, *, precision: str, workspace_gb: float, profile: tuple[ProfileEntry, ...],
                     timing_cache: Path, progress: BuildProgress, feeder: CalibrationFeeder | None = None,
                     table: CalibrationTable | None = None) -> bytes:
    """Parse ``onnx_path``, build with the given precision, profile and timing cache, return the plan."""
    logger = _Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT {version()} cannot parse this graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
    shapes = builder.create_optimization_profile()
    for name, low, opt, high in profile:
        shapes.set_shape(name, low, opt, high)
    config.add_optimization_profile(shapes)
    if precision == "int8":
        if feeder is None or table is None:
            raise BackendError("an INT8 build needs calibration frames (--calib SOURCE)")
        config.set_flag(trt.BuilderFlag.INT8)
        # Calibrate and quantise the networks only: pre/post-processing (resize, box decode,
        # NMS, masks) asked to stay FP32 (segengine.backends.int8_scope says why).
        if keep_outside_networks_fp32(network, trt):
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        config.int8_calibrator = _calibrator(feeder, table)
        config.set_calibration_profile(shapes)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a foreign cache is ignored, not fatal
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = _Monitor(progress)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        if progress.cancelled:
            raise KeyboardInterrupt
        raise BackendError(f"TensorRT {version()} could not build {onnx_path}: "
                           + ("; ".join(logger.errors[-3:]) or "no reason given"))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def load_engine(path: Path, logger: _Logger | None = None) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """Deserialise ``path`` (its sidecar was checked before); a refusal becomes a BackendError, not a crash.
    ``logger`` must outlive the runtime (TensorRT keeps calling it), so the runner passes its own."""
    logger = logger if logger is not None else _Logger()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise BackendError(f"{path}: TensorRT {version()} cannot load this engine "
                           f"({'; '.join(logger.errors[-2:]) or 'no reason given'}); delete it and run "
                           "`segengine build` again")
    return runtime, engine


def _profile(engine: trt.ICudaEngine, name: str) -> str:
    """The shape range ``name`` was built for, for error messages."""
    try:
        low, _, high = engine.get_tensor_profile_shape(name, 0)
        return f"{tuple(low)} to {tuple(high)}"
    except Exception:  # an error message must not fail on a binding it does not have
        return "another shape"


def io_spec(engine: trt.ICudaEngine, context: trt.IExecutionContext, batch: int = 1) -> IOSpec:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            shape = tuple(engine.get_tensor_shape(name))
            if shape[0] == -1:
                shape = (batch, *shape[1:])
            if not context.set_input_shape(name, shape):  # outside the engine's profile: outputs would be junk
                raise BackendError(f"engine input {name}: TensorRT refuses shape {shape} (the engine was built "
                                   f"for {_profile(engine, name)}); build one for this shape "
                                   "(segengine build --frame-size WxH --max-batch N)")
            inputs.append(TensorSpec(name, shape, dtype))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))  # resolved by the input shapes above
            if any(dim < 0 for dim in shape):  # would need an IOutputAllocator per frame
                raise BackendError(f"engine output {name} has a data-dependent shape {shape}; segengine graphs "
                                   "pad their outputs to fixed sizes (re-export the graph with `segengine export`)")
            outputs.append(TensorSpec(name, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
    if len(inputs) != 1:
        raise BackendError(f"a segengine engine has one input (the frame), this one has {len(inputs)}")
    return IOSpec(inputs[0], tuple(outputs))


class _ContextExecutor:
    def __init__(self, context: trt.IExecutionContext) -> None:
        self.context = context

    def bind(self, name: str, ptr: int) -> None:
        self.context.set_tensor_address(name, ptr)

    def enqueue(self, stream: Stream) -> None:
        if not self.context.execute_async_v3(stream.handle):
            raise BackendError("TensorRT execute_async_v3 failed")


class EngineRunner:
    """A serialized engine run by the double-buffered runtime; ``submit``/``collect`` overlap frames.
    Owns ``memory`` from here on (closed with it)."""

    def __init__(self, engine_path: Path, memory: Memory, *, depth: int = 2, cuda_graphs: bool = True,
                 batch: int = 1) -> None:
        self.memory = memory
        self._logger = _Logger()
        self._runtime, self._engine = load_engine(engine_path, self._logger)
        self._context = self._engine.create_execution_context()
        if self._context is None:  # TensorRT says so through its logger, not by raising
            raise BackendError(f"{engine_path}: TensorRT {version()} could not create an execution context "
                               f"({'; '.join(self._logger.errors[-2:]) or 'no reason given'}); this is usually "
                               "too little free GPU memory: stop other GPU processes or use a smaller engine "
                               "(--workspace, a smaller --frame-size or --max-batch)")
        self.io = io_spec(self._engine, self._context, batch)  # fixed: buffers and CUDA graph made once
        self._streamed: StreamedRuntime | None = StreamedRuntime(memory, self.io, _ContextExecutor(self._context),
                                                                 depth=depth, cuda_graphs=cuda_graphs)
        self.output_names = [o.name for o in self.io.outputs]

    def _run(self) -> StreamedRuntime:
        if self._streamed is None:
            raise BackendError("backend is closed")
        return self._streamed

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        return self._run().infer(frame)

    def submit(self, frame: np.ndarray) -> None:
        self._run().submit(frame)

    def collect(self) -> dict[str, np.ndarray]:
        return self._run().collect()

    def graph_report(self) -> str:
        """Whether the frames run as captured CUDA graphs, and if not, why (StreamedRuntime's record)."""
        return self._run().graph_report()

    def close(self) -> None:
        if self._streamed is not None:
            self._streamed.close()
            self._streamed = None
            self._context = self._engine = self._runtime = None  # TensorRT frees on release
            self.memory.close()
