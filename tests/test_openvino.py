"""OpenVINO: bf16 only where the CPU computes it and the accuracy guard cleared every network; auto picks it
only then; fp32 gives ONNX Runtime's answers."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from segengine.backends.accuracy import MAX_LOSS_POINTS, bf16_keeps_accuracy
from segengine.backends.base import BackendOptions
from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.backends.openvino import OpenVinoBackend
from segengine.backends.probe import GpuEnvironment, cpu_isa, has_bf16
from segengine.backends.registry import choose
from segengine.errors import BackendError
from segengine.models import zoo
from tests.factories import road_spec

ROAD, STREET = ("twinlitenet", "yolov5s-seg"), ("twinlitenet", "yolov5s-seg", "espnetv2-cityscapes")
CPU = GpuEnvironment("2.13.0+cpu", None, None, None, None, None, None, None)
ZEN4 = replace(CPU, openvino_version="2026.4.1", cpu_isa=("avx2", "avx512f", "avx512_bf16"))
AVX2 = replace(ZEN4, cpu_isa=("avx2",))
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")


def test_the_guard_clears_only_networks_measured_within_half_a_point() -> None:
    assert bf16_keeps_accuracy(ROAD) and MAX_LOSS_POINTS == 0.5
    assert not bf16_keeps_accuracy(STREET)  # espnetv2 lost 1.5-1.6 points on Building and Sky
    assert not bf16_keeps_accuracy(("yolo11n-seg.onnx",)) and not bf16_keeps_accuracy(())  # unmeasured


@pytest.mark.parametrize(("asked", "isa", "models", "runs"), [
    ("auto", ZEN4.cpu_isa, ROAD, "bf16"),
    ("auto", ZEN4.cpu_isa, STREET, "fp32"),  # the guard keeps espnetv2 in fp32
    ("auto", AVX2.cpu_isa, ROAD, "fp32"),  # no native bf16: it would be emulated, slowly
    ("bf16", ZEN4.cpu_isa, STREET, "bf16"),  # asked for: the user's call
    ("fp32", ZEN4.cpu_isa, ROAD, "fp32"),
])
def test_precision_choice(asked: str, isa: tuple[str, ...], models: tuple[str, ...], runs: str) -> None:
    assert OpenVinoBackend.precision_for(BackendOptions(precision=asked), isa, models) == runs


def test_impossible_precisions_are_refused_with_the_reason() -> None:
    with pytest.raises(BackendError, match="bf16 needs a CPU with AVX-512 BF16 or AMX; this one has avx2"):
        OpenVinoBackend.precision_for(BackendOptions(precision="bf16"), AVX2.cpu_isa, ROAD)
    with pytest.raises(BackendError, match="onnxruntime runs fp32, not bf16"):
        OnnxRuntimeBackend.check_precision(BackendOptions(precision="bf16"))


def test_auto_picks_openvino_only_where_bf16_is_fast_and_safe() -> None:
    assert choose("auto", ZEN4, ROAD).name == "openvino"
    assert "bf16 for networks the accuracy guard cleared" in choose("auto", ZEN4, ROAD).reason
    assert choose("auto", ZEN4, STREET).name == "onnxruntime"  # fp32 OpenVINO is slower than ONNX Runtime
    assert choose("auto", AVX2, ROAD).name == "onnxruntime"
    assert choose("auto", CPU, ROAD).name == "onnxruntime"
    with pytest.raises(BackendError, match=r"openvino cannot run here: OpenVINO is not installed \(`pip install"):
        choose("openvino", CPU)


def test_the_cpus_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_isa(info) == ("avx2", "avx512f", "avx512_bf16", "amx_tile") and has_bf16(cpu_isa(info))
    info.write_text("flags\t\t: fpu sse2 avx2\n")
    assert cpu_isa(info) == ("avx2",) and not has_bf16(cpu_isa(info))
    assert cpu_isa(tmp_path / "absent") == ()  # not Linux: no flags, no bf16, fp32


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_gives_onnxruntimes_answers(precision: str, dirs: zoo.WeightDirs, highway_frame: np.ndarray) -> None:
    from segengine.graph.prepare import GraphTarget, prepare

    if precision == "bf16" and not has_bf16(cpu_isa()):
        pytest.skip("this CPU has no native bf16")
    prepared = prepare(GraphTarget("road"), highway_frame.shape[:2], "onnx", dirs)
    want = OnnxRuntimeBackend(prepared.graph, prepared.spec).infer(highway_frame)
    backend = OpenVinoBackend(prepared.graph, prepared.spec, BackendOptions(precision=precision, dirs=dirs))
    got = backend.infer(highway_frame)
    backend.close()
    assert backend.precision == precision and list(got) == list(want)
    if precision == "fp32":
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-3, err_msg=name)
        return
    for name in ("drivable", "lanes"):
        assert (got[name] != want[name]).mean() < 0.005, name
    confident = want["scores"][0] > 0.5
    assert (got["scores"][0][confident] > 0.4).all()  # the same cars, in the same rows of the top-K
    np.testing.assert_array_equal(got["classes"][0][confident], want["classes"][0][confident])
    np.testing.assert_allclose(got["boxes"][0][confident], want["boxes"][0][confident], atol=3.0)


def test_openvino_refuses_other_devices() -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("needs openvino")
    with pytest.raises(BackendError, match="not on 'cuda'"):
        OpenVinoBackend("unused.onnx", road_spec(), BackendOptions(device="cuda"))


@needs_openvino
def test_openvino_streams_keep_frames_in_flight_in_order(dirs: zoo.WeightDirs, highway_frame: np.ndarray) -> None:
    from segengine.graph.prepare import GraphTarget, prepare

    prepared = prepare(GraphTarget("road"), highway_frame.shape[:2], "onnx", dirs)
    options = BackendOptions(precision="fp32", dirs=dirs)
    one = OpenVinoBackend(prepared.graph, prepared.spec, replace(options, streams=1))
    frames = [highway_frame, np.ascontiguousarray(highway_frame[:, ::-1])]  # mirrored: other cars, other boxes
    want = [one.infer(f) for f in frames]
    assert one.depth == 1
    one.close()
    two = OpenVinoBackend(prepared.graph, prepared.spec, replace(options, streams=2))
    assert two.depth == 2
    with pytest.raises(BackendError, match="no frame in flight"):
        two.collect()
    for frame in frames:
        two.submit(frame)
    with pytest.raises(BackendError, match="2 frames in flight already"):
        two.submit(highway_frame)
    with pytest.raises(BackendError, match="collect them before calling infer"):
        two.infer(highway_frame)
    for expected in want:  # oldest first, each frame's own outputs
        got = two.collect()
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-3, err_msg=name)
    two.submit(highway_frame)
    two.close()  # waits for the frame in flight, then refuses
    with pytest.raises(BackendError, match="closed"):
        two.submit(highway_frame)
