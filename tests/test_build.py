"""`segengine build` around TensorRT: what is said without a GPU, the shape profile, the calibration
frames, the progress, and the cache decisions (with a stand-in for the TensorRT module)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from segengine.backends.build_progress import BuildProgress
from segengine.backends.calibration import CalibrationFeeder, CalibrationTable, calibration_identity
from segengine.backends.cuda.host import HostMemory
from segengine.backends.probe import GpuEnvironment
from segengine.build import BuildRequest, build, engine_for_run, onnx_inputs, require_tensorrt, shape_profile
from segengine.cli import main
from segengine.errors import BackendError, ConfigError
from segengine.models import zoo

CPU = GpuEnvironment("2.13.0+cpu", None, None, None, None, None, None, None)
GPU_NO_TRT = GpuEnvironment("2.13.0", "12.8", "NVIDIA GeForce RTX 4090", "8.9", None, None,
                            "NVRM version: 570.86", None)
JETSON = GpuEnvironment(None, None, None, None, "10.3.0", "12.6.0", "Jetson (L4T)", "NVIDIA Jetson Orin Nano")


# -- on this machine, through the command line ---------------------------------------------------


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGENGINE_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "segengine.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_build_without_tensorrt_or_gpu_exits_2_and_says_what_to_install(tmp_path: Path) -> None:
    done = _cli("build", "road", "--fp16", tmp_path=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for needed in ("TensorRT: not installed", "pip install -e '.[tensorrt]'", "JetPack",
                   "NVIDIA GPU: no NVIDIA driver", "CPU-only build", "`segengine run` uses ONNX Runtime"):
        assert needed in done.stderr, done.stderr
    assert not (tmp_path / "cache" / "graphs").exists()  # said before minutes of graph export


@pytest.mark.parametrize(("args", "message"), [
    (["road", "--int8"], "--int8 needs real frames to calibrate on: add --calib"),
    (["road", "--calib", "x.mp4"], "--calib is only used with --int8"),
    (["road", "--int8", "--calib", "{tmp}/nope.mp4"], "source not found"),
    (["highway"], "unknown preset or model 'highway'"),
    (["{tmp}/missing.onnx"], "no such ONNX file"),
    (["road", "--workspace", "0"], "--workspace 0.0"),
    (["road", "--max-batch", "0"], "positive whole number"),
])
def test_bad_build_requests_exit_2_before_looking_for_a_gpu(args: list[str], message: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGENGINE_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["build", *(a.format(tmp=tmp_path) for a in args)]
    if "whole number" in message:  # argparse's own check exits 2 itself
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "TensorRT engines need" not in err


def test_what_is_missing_is_said_for_each_kind_of_machine() -> None:
    with pytest.raises(BackendError) as info:
        require_tensorrt(GPU_NO_TRT)
    text = str(info.value)
    assert "TensorRT: not installed" in text and "NVIDIA GPU:" not in text and "CUDA memory" not in text
    require_tensorrt(JETSON)  # TensorRT from JetPack, memory through cuda-python: nothing missing
    with pytest.raises(BackendError, match="CUDA memory .*CPU-only build"):
        require_tensorrt(replace(GPU_NO_TRT, tensorrt_version="10.7.0", torch_cuda=None, cuda_device=None))


# -- shapes --------------------------------------------------------------------------------------


def _graph(path: Path, batch: int | str = 1, height: int | str = 16) -> Path:
    frame = helper.make_tensor_value_info("frame", TensorProto.UINT8, [batch, height, 16, 3])
    out = helper.make_tensor_value_info("out", TensorProto.UINT8, [batch, height, 16, 3])
    weight = helper.make_tensor("w", TensorProto.UINT8, [1], [1])
    graph = helper.make_graph([helper.make_node("Identity", ["frame"], ["out"])], "g", [frame],
                              [out], initializer=[weight])
    graph.input.append(helper.make_tensor_value_info("w", TensorProto.UINT8, [1]))  # old-style initialiser input
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_profile_of_a_fixed_graph_and_of_a_dynamic_batch(tmp_path: Path) -> None:
    fixed = onnx_inputs(_graph(tmp_path / "fixed.onnx"))
    assert fixed == [("frame", (1, 16, 16, 3))]
    assert shape_profile(fixed, 1) == (("frame", (1, 16, 16, 3), (1, 16, 16, 3), (1, 16, 16, 3)),)
    with pytest.raises(ConfigError, match="fixed batch of 1; export it with a dynamic batch axis"):
        shape_profile(fixed, 4)
    dynamic = onnx_inputs(_graph(tmp_path / "dynamic.onnx", batch="N"))
    assert shape_profile(dynamic, 4) == (("frame", (1, 16, 16, 3), (4, 16, 16, 3), (4, 16, 16, 3)),)
    with pytest.raises(ConfigError, match="dynamic axis 1 .*--frame-size"):
        shape_profile(onnx_inputs(_graph(tmp_path / "h.onnx", height="H")), 1)


# -- calibration frames and table -----------------------------------------------------------------


def test_calibration_batches_are_real_frames_at_the_engines_size() -> None:
    memory = HostMemory()
    uri = "synthetic://?width=64&height=48&frames=7"
    feeder = CalibrationFeeder(uri, memory, frame_size=(24, 32), batch=2, frames=7)
    from segengine.backends.calibration import read_frames

    want = list(read_frames(uri, (24, 32), 7))
    assert len(want) == 7 and want[0].shape == (24, 32, 3) and want[0].std() > 10  # a real scene, resized
    seen = []
    while (ptr := feeder.next_batch()) is not None:
        assert ptr == feeder._device.ptr  # type: ignore[union-attr]
        seen.extend(feeder.device_view().copy())
    assert feeder.batches == 3 and len(seen) == 6  # 7 frames: three whole batches, the odd frame dropped
    for got, frame in zip(seen, want):
        np.testing.assert_array_equal(got, frame)
    feeder.close()
    assert memory.ledger.live == 0


def test_a_calibration_source_without_frames_is_an_error() -> None:
    feeder = CalibrationFeeder("synthetic://?width=32&height=32&frames=0", HostMemory(), frame_size=(32, 32))
    with pytest.raises(ConfigError, match="gave no frames"):
        feeder.next_batch()
    feeder.close()


def test_calibration_table_and_identity(tmp_path: Path) -> None:
    table = CalibrationTable(tmp_path / "t" / "calib.table")
    assert table.read() is None and table.digest == ""
    table.write(b"TRT-1003-EntropyCalibration2\nframe: 3c010a14\n")
    assert table.read() is not None and len(table.digest) == 16
    table.path.write_bytes(b"")
    assert table.read() is None  # empty: calibrate again
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    first = calibration_identity(str(video), 64, 1)
    video.write_bytes(b"xy")
    assert calibration_identity(str(video), 64, 1) != first != calibration_identity(str(video), 32, 1)


# -- progress ------------------------------------------------------------------------------------


def test_progress_shows_phases_and_cancels_on_request() -> None:
    out = io.StringIO()
    progress = BuildProgress(out, heartbeat=0)
    progress.phase_start("Building engine", None, 3)
    progress.phase_start("Tactic timing", "Building engine", 40)
    assert progress.step_complete("Tactic timing", 11)
    assert progress.where() == "Building engine › Tactic timing 12/40"
    assert "still building" in progress.beat() and "Tactic timing 12/40" in out.getvalue()
    progress.phase_finish("Tactic timing")
    assert progress.where() == "Building engine 0/3"
    progress.cancel()
    assert progress.step_complete("Building engine", 0) is False
    assert "segengine: Building engine (3 steps)" in out.getvalue()


def test_ctrl_c_during_a_build_asks_tensorrt_to_stop_at_its_next_step() -> None:
    out = io.StringIO()
    progress = BuildProgress(out, heartbeat=0)
    before = signal.getsignal(signal.SIGINT)
    with progress.cancel_on_sigint():
        signal.raise_signal(signal.SIGINT)
        assert progress.cancelled and progress.step_complete("Building engine", 0) is False
        # A second Ctrl-C raises nothing: inside TensorRT's callbacks pybind would swallow it anyway.
        signal.raise_signal(signal.SIGINT)
        assert progress.step_complete("Building engine", 1) is False
    assert signal.getsignal(signal.SIGINT) is before
    said = out.getvalue()
    assert "cancelling the build at TensorRT's next step" in said
    assert "cannot be interrupted inside one" in said and "Ctrl-\\ (SIGQUIT)" in said


def test_heartbeat_speaks_while_the_builder_is_silent() -> None:
    out = io.StringIO()
    with BuildProgress(out, heartbeat=0.02):
        deadline = time.monotonic() + 10
        while "still building" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "still building: 0s elapsed, preparing" in out.getvalue()
    assert not [t for t in threading.enumerate() if t.name == "segengine-build-progress"]


# -- the cache decisions, with a stand-in for segengine.backends.tensorrt ----------------------------


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    calls: list[dict] = []
    state = types.SimpleNamespace(calls=calls, fp16=True)

    def build_serialized(onnx_path, **kwargs):
        calls.append(kwargs)
        kwargs["progress"].phase_start("Building engine", None, 1)
        kwargs["progress"].step_complete("Building engine", 0)
        kwargs["progress"].phase_finish("Building engine")
        if kwargs["feeder"] is not None:  # the calibrator's part: pull every batch, write the table
            while kwargs["feeder"].next_batch() is not None:
                pass
            kwargs["table"].write(b"calibration table")
        kwargs["timing_cache"].write_bytes(b"timings")
        return b"plan:" + Path(onnx_path).read_bytes()[:32] + kwargs["precision"].encode()

    module = types.ModuleType("segengine.backends.tensorrt")
    module.build_serialized = build_serialized  # type: ignore[attr-defined]
    module.supports = lambda precision: precision != "fp16" or state.fp16  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "segengine.backends.tensorrt", module)
    import segengine.backends

    monkeypatch.setattr(segengine.backends, "tensorrt", module, raising=False)
    return state


def _dirs(tmp_path: Path) -> zoo.WeightDirs:
    return zoo.WeightDirs(cache=tmp_path / "cache" / "models", mirror=None)


def test_build_caches_reuses_and_rebuilds_a_damaged_engine(tmp_path: Path, fake_trt) -> None:
    graph = _graph(tmp_path / "mine.onnx")
    request = BuildRequest(str(graph), precision="fp16")
    out = io.StringIO()
    path, lookup = build(request, JETSON, _dirs(tmp_path), out=out, memory=HostMemory())
    assert lookup.status == "missing" and len(fake_trt.calls) == 1 and path.read_bytes().endswith(b"fp16")
    assert path.parent == tmp_path / "cache" / "engines" and path.with_suffix(".json").is_file()
    assert fake_trt.calls[0]["timing_cache"].read_bytes() == b"timings"
    assert "building the fp16 TensorRT engine" in out.getvalue() and "finished in" in out.getvalue()

    path2, lookup = build(request, JETSON, _dirs(tmp_path), out=out, memory=HostMemory())
    assert path2 == path and lookup.usable and len(fake_trt.calls) == 1 and "is up to date" in out.getvalue()

    path.write_bytes(b"garbage")
    build(request, JETSON, _dirs(tmp_path), out=out, memory=HostMemory())
    assert len(fake_trt.calls) == 2 and "is corrupt" in out.getvalue() and "rebuilding" in out.getvalue()
    build(replace(request, force=True), JETSON, _dirs(tmp_path), out=out, memory=HostMemory())
    assert len(fake_trt.calls) == 3

    other = replace(JETSON, tensorrt_version="10.7.0")  # an upgrade: a new key, a new engine
    path3, _ = build(request, other, _dirs(tmp_path), out=out, memory=HostMemory())
    assert path3 != path and len(fake_trt.calls) == 4


def test_int8_calibrates_on_the_users_frames_once(tmp_path: Path, fake_trt) -> None:
    graph = _graph(tmp_path / "mine.onnx")
    request = BuildRequest(str(graph), precision="int8", calib="synthetic://?width=16&height=16&frames=5",
                           calib_frames=5)
    memory = HostMemory()
    path, _ = build(request, JETSON, _dirs(tmp_path), out=io.StringIO(), memory=memory)
    call = fake_trt.calls[0]
    assert call["precision"] == "int8" and call["feeder"].batches == 5
    assert call["table"].read() == b"calibration table" and memory.ledger.live == 0
    out = io.StringIO()
    build(replace(request, force=True), JETSON, _dirs(tmp_path), out=out, memory=HostMemory())
    assert "reusing the calibration table" in out.getvalue()


def test_tensorrt_without_fp16_says_which_version_to_install(tmp_path: Path, fake_trt) -> None:
    fake_trt.fp16 = False
    with pytest.raises(BackendError, match=r"TensorRT 11 builds strongly typed graphs only.*tensorrt-cu12>=10,<11"):
        build(BuildRequest(str(_graph(tmp_path / "g.onnx")), precision="fp16"),
              replace(JETSON, tensorrt_version="11.4.0"), _dirs(tmp_path), out=io.StringIO(), memory=HostMemory())


def test_run_builds_fp16_once_then_finds_it_and_prefers_int8(tmp_path: Path, fake_trt) -> None:
    graph = _graph(tmp_path / "mine.onnx")
    out = io.StringIO()
    path, key = engine_for_run(graph, JETSON, _dirs(tmp_path), HostMemory(), label="mine", out=out)
    assert key.precision == "fp16" and len(fake_trt.calls) == 1 and "building one (fp16" in out.getvalue()
    again, _ = engine_for_run(graph, JETSON, _dirs(tmp_path), HostMemory(), label="mine", out=out)
    assert again == path and len(fake_trt.calls) == 1
    int8, _ = build(BuildRequest(str(graph), precision="int8", calib="synthetic://?width=16&height=16&frames=2",
                                 calib_frames=2), JETSON, _dirs(tmp_path), out=out, memory=HostMemory())
    chosen, key = engine_for_run(graph, JETSON, _dirs(tmp_path), HostMemory(), label="mine", out=out)
    assert chosen == int8 and key.precision == "int8"
