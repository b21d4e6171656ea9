"""segengine.backends.tensorrt against a stand-in for the ``tensorrt`` module that has the documented API.

This proves our side of the wiring (which calls, in which order, with which values, and that
TensorRT's refusals become BackendErrors with a fix), so the GPU-side code is at least executed
in CI. It proves nothing about TensorRT itself: tests/gpu does that where a GPU is available.
"""

from __future__ import annotations

import enum
import importlib
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from segengine.backends.build_progress import BuildProgress
from segengine.backends.cuda.host import HostMemory
from segengine.errors import BackendError


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _stub(log: list, plan: bytes | None = b"PLAN", engine_ok: bool = True, context_ok: bool = True,
          shape_ok: bool = True, during_build=lambda: None) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    trt.ILogger, trt.IProgressMonitor, trt.IInt8EntropyCalibrator2 = ILogger, IProgressMonitor, IInt8EntropyCalibrator2
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 PREFER_PRECISION_CONSTRAINTS")
    trt.float32, trt.float16, trt.int32 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int32)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.nptype = lambda dtype: dtype  # the stub's dtypes are numpy dtypes already

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+new"

    class Config:
        def __init__(self) -> None:
            self.flags: list = []
            self.progress_monitor = None
            self.int8_calibrator = None
            self._cache = None

        def set_memory_pool_limit(self, pool, size) -> None:
            log.append(("workspace", pool.name, size))

        def set_flag(self, flag) -> None:
            self.flags.append(flag.name)

        def add_optimization_profile(self, profile) -> None:
            log.append(("profile", profile.shapes))

        def set_calibration_profile(self, profile) -> None:
            log.append(("calibration profile", profile.shapes))

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> None:
            self._cache = cache

        def get_timing_cache(self) -> Cache:
            return self._cache

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, low, opt, high) -> None:
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Tensor:
        def __init__(self, dtype) -> None:
            self.dtype = dtype

    class Layer:
        """Named as the ONNX parser names layers: after their node."""

        def __init__(self, name: str, dtype) -> None:
            self.name, self.precision, self.outputs = name, None, [Tensor(dtype)]
            self.num_outputs = 1

        def get_output(self, j: int) -> Tensor:
            return self.outputs[j]

        def set_output_type(self, j: int, dtype) -> None:
            self.outputs[j].dtype = dtype
            log.append(("output type", self.name, dtype.name))

    class Network:
        def __init__(self) -> None:
            self.layers = [Layer("twinlitenet/pre/node_index_select", trt.int32),
                           Layer("twinlitenet/pre/node_mul_4", trt.float32),
                           Layer("yolov5s-seg/net/model.0/conv/Conv", trt.float32),
                           Layer("yolov5s-seg/post/node_div", trt.float16)]
            self.num_layers = len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network, config: Config):
            log.append(("flags", tuple(config.flags)))
            log.append(("precisions", {layer.name: layer.precision for layer in network.layers}))
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            during_build()  # where a Ctrl-C lands: inside the build, between two steps
            if not monitor.step_complete("Building engine", 0):
                log.append(("cancelled", "Building engine", 0))
                return None
            monitor.phase_finish("Building engine")
            if config.int8_calibrator is not None:
                calibrator = config.int8_calibrator
                assert calibrator.read_calibration_cache() is None
                batches = 0
                while calibrator.get_batch(["frame"]) is not None:
                    batches += 1
                log.append(("calibrated", calibrator.get_batch_size(), batches))
                calibrator.write_calibration_cache(memoryview(b"table"))
            if plan is None:
                self.logger.log(Severity.ERROR, "no kernel for NonMaxSuppression")
                self.logger.log(Severity.INFO, "chatter")
            return plan

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            if Path(path).read_bytes() == b"bad":
                self.num_errors = 1
                return False
            return True

        def get_error(self, i: int) -> str:
            return "unsupported op Foo"

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    # -- the runtime side: an engine of one uint8 input and one float output (per-channel sums)
    shapes = {"frame": ((1, 4, 6, 3), np.dtype(np.uint8), "INPUT"), "total": ((1, 3), np.dtype(np.float32), "OUTPUT")}

    class Context:
        def __init__(self) -> None:
            self.addresses: dict[str, int] = {}
            self.memory: HostMemory | None = None

        def set_input_shape(self, name, shape) -> bool:
            log.append(("input shape", name, tuple(shape)))
            return shape_ok

        def get_tensor_shape(self, name):
            return shapes[name][0]

        def set_tensor_address(self, name, ptr) -> None:
            self.addresses[name] = ptr

        def execute_async_v3(self, stream: int) -> bool:
            buffers = {b.ptr: b for b in trt.memory.ledger.remaining()}
            frame = buffers[self.addresses["frame"]].view(np.uint8, (1, 4, 6, 3))
            buffers[self.addresses["total"]].view(np.float32, (1, 3))[...] = frame.reshape(-1, 3).sum(0)
            log.append(("execute", stream))
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return list(shapes)[i]

        def get_tensor_dtype(self, name):
            return shapes[name][1]

        def get_tensor_shape(self, name):
            return shapes[name][0]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode[shapes[name][2]]

        def get_tensor_profile_shape(self, name, index):
            return [shapes[name][0]] * 3

        def create_execution_context(self) -> Context | None:
            if not context_ok:  # what TensorRT does when the context's device memory cannot be allocated
                self.logger.log(Severity.ERROR, "Requested amount of GPU memory (8589934592 bytes) could not be "
                                "allocated")
                return None
            return Context()

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            if not engine_ok:
                self.logger.log(Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            engine = Engine()
            engine.logger = self.logger
            return engine

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch):
    def load(**options):
        log: list = []
        stub = _stub(log, **options)
        monkeypatch.setitem(sys.modules, "tensorrt", stub)
        monkeypatch.delitem(sys.modules, "segengine.backends.tensorrt", raising=False)
        module = importlib.import_module("segengine.backends.tensorrt")
        return module, stub, log

    yield load
    import segengine.backends

    sys.modules.pop("segengine.backends.tensorrt", None)
    if "tensorrt" in vars(segengine.backends):  # the import bound the stub-backed module on the package
        delattr(segengine.backends, "tensorrt")


PROFILE = (("frame", (1, 4, 6, 3), (1, 4, 6, 3), (1, 4, 6, 3)),)


def test_build_sets_precision_workspace_profile_and_keeps_the_timing_cache(wired, tmp_path: Path) -> None:
    trt_backend, _, log = wired()
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"onnx")
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"old")
    out = io.StringIO()
    plan = trt_backend.build_serialized(graph, precision="fp16", workspace_gb=1.5, profile=PROFILE, timing_cache=timing,
                                       progress=BuildProgress(out, heartbeat=0))
    assert plan == b"PLAN" and timing.read_bytes() == b"old+new"
    assert ("workspace", "WORKSPACE", int(1.5 * (1 << 30))) in log and ("flags", ("FP16",)) in log
    assert ("profile", {"frame": PROFILE[0][1:]}) in log and "Building engine (2 steps)" in out.getvalue()


def test_int8_feeds_the_calibrator_and_stores_its_table(wired, tmp_path: Path) -> None:
    from segengine.backends.calibration import CalibrationFeeder, CalibrationTable

    trt_backend, _, log = wired()
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"onnx")
    memory = HostMemory()
    feeder = CalibrationFeeder("synthetic://?width=32&height=32&frames=3", memory, frame_size=(4, 6), frames=3)
    table = CalibrationTable(tmp_path / "calib.table")
    trt_backend.build_serialized(graph, precision="int8", workspace_gb=1, profile=PROFILE, timing_cache=tmp_path / "t",
                                 progress=BuildProgress(io.StringIO(), heartbeat=0), feeder=feeder, table=table)
    assert ("flags", ("FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS")) in log and ("calibrated", 1, 3) in log
    # Only the networks are quantised: float pre/post-processing layers are asked for FP32.
    f32 = np.dtype(np.float32)
    assert ("precisions", {"twinlitenet/pre/node_index_select": None, "twinlitenet/pre/node_mul_4": f32,
                           "yolov5s-seg/net/model.0/conv/Conv": None, "yolov5s-seg/post/node_div": f32}) in log
    assert ("output type", "yolov5s-seg/post/node_div", "float32") in log
    assert ("calibration profile", {"frame": PROFILE[0][1:]}) in log and table.read() == b"table"
    feeder.close()


def test_refusals_become_errors_with_reasons(wired, tmp_path: Path) -> None:
    trt_backend, _, _ = wired(plan=None)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"bad")
    kwargs = dict(precision="fp32", workspace_gb=1, profile=PROFILE, timing_cache=tmp_path / "t",
                  progress=BuildProgress(io.StringIO(), heartbeat=0))
    with pytest.raises(BackendError, match="cannot parse this graph: unsupported op Foo"):
        trt_backend.build_serialized(bad, **kwargs)
    good = tmp_path / "good.onnx"
    good.write_bytes(b"onnx")
    with pytest.raises(BackendError, match="could not build .*no kernel for NonMaxSuppression"):
        trt_backend.build_serialized(good, **kwargs)
    cancelled = BuildProgress(io.StringIO(), heartbeat=0)
    cancelled.cancel()
    with pytest.raises(KeyboardInterrupt):
        trt_backend.build_serialized(good, **{**kwargs, "progress": cancelled})


def test_an_engine_tensorrt_refuses_is_an_error_with_the_fix(wired, tmp_path: Path) -> None:
    trt_backend, _, _ = wired(engine_ok=False)
    path = tmp_path / "x.engine"
    path.write_bytes(b"junk")
    with pytest.raises(BackendError, match="magicTagRead.*delete it and run `segengine build` again"):
        trt_backend.load_engine(path)


def test_backend_runs_frames_through_the_streamed_runtime_and_frees_everything(wired, tmp_path: Path) -> None:
    trt_backend, stub, log = wired()
    memory = HostMemory()
    stub.memory = memory
    path = tmp_path / "x.engine"
    path.write_bytes(b"PLAN")
    backend = trt_backend.EngineRunner(path, memory)
    assert backend.io.input.shape == (1, 4, 6, 3) and [o.name for o in backend.io.outputs] == ["total"]
    assert ("input shape", "frame", (1, 4, 6, 3)) in log
    frames = [np.full((4, 6, 3), v, np.uint8) for v in (1, 2, 3)]
    assert backend.infer(frames[0])["total"].tolist() == [[24.0, 24.0, 24.0]]
    backend.submit(frames[1])
    backend.submit(frames[2])
    assert backend.collect()["total"][0, 0] == 48.0 and backend.collect()["total"][0, 0] == 72.0
    assert backend.graph_report().endswith("not captured: the host implementation has no CUDA graphs")
    backend.close()
    backend.close()
    assert memory.ledger.live == 0
    with pytest.raises(BackendError, match="closed"):
        backend.infer(frames[0])


def test_an_engine_with_data_dependent_outputs_is_refused(wired, tmp_path: Path, monkeypatch) -> None:
    trt_backend, stub, _ = wired()
    stub.memory = HostMemory()
    path = tmp_path / "x.engine"
    path.write_bytes(b"PLAN")
    _, engine = trt_backend.load_engine(path)
    context = engine.create_execution_context()
    monkeypatch.setattr(type(context), "get_tensor_shape", lambda self, name: (-1, 3))
    with pytest.raises(BackendError, match="output total has a data-dependent shape"):
        trt_backend.io_spec(engine, context)


def test_no_execution_context_is_an_error_naming_gpu_memory(wired, tmp_path: Path) -> None:
    trt_backend, stub, _ = wired(context_ok=False)
    memory = HostMemory()
    stub.memory = memory
    path = tmp_path / "x.engine"
    path.write_bytes(b"PLAN")
    with pytest.raises(BackendError, match=r"x.engine: .*could not create an execution context \(Requested amount "
                       r"of GPU memory .*too little free GPU memory"):
        trt_backend.EngineRunner(path, memory)


def test_a_refused_input_shape_is_an_error_with_the_engines_range(wired, tmp_path: Path) -> None:
    trt_backend, stub, _ = wired(shape_ok=False)
    stub.memory = HostMemory()
    path = tmp_path / "x.engine"
    path.write_bytes(b"PLAN")
    _, engine = trt_backend.load_engine(path)
    with pytest.raises(BackendError, match=r"input frame: TensorRT refuses shape \(1, 4, 6, 3\) \(the engine was "
                       r"built for \(1, 4, 6, 3\) to \(1, 4, 6, 3\)\); build one .*--frame-size"):
        trt_backend.io_spec(engine, engine.create_execution_context())


def test_ctrl_c_mid_build_cancels_through_the_progress_monitor(wired, tmp_path: Path) -> None:
    import signal

    def ctrl_c_twice() -> None:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # the second one must not raise inside TensorRT's callback

    trt_backend, _, log = wired(during_build=ctrl_c_twice)
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"onnx")
    out = io.StringIO()
    progress = BuildProgress(out, heartbeat=0)
    with progress.cancel_on_sigint(), pytest.raises(KeyboardInterrupt):
        trt_backend.build_serialized(graph, precision="fp32", workspace_gb=1, profile=PROFILE,
                                     timing_cache=tmp_path / "t", progress=progress)
    assert ("cancelled", "Building engine", 0) in log  # TensorRT was told to stop at its next step
    assert not (tmp_path / "t").exists() and "cancelling the build" in out.getvalue()
