"""`segengine doctor` on this machine, its exit status, and the reasons `--backend auto` gives."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from segengine.backends.probe import GpuEnvironment, detect
from segengine.backends.registry import BACKENDS, NAMES, available_report, choose
from segengine.doctor import INFO, MISSING, OK, Check, checks, report
from segengine.errors import BackendError, ConfigError

CPU = GpuEnvironment("2.13.0+cpu", None, None, None, None, None, None, None)
GPU = GpuEnvironment("2.13.0", "12.8", "NVIDIA GeForce RTX 4090", "8.9", "10.7.0", None, "NVRM version: 570.86", None)
JETSON = GpuEnvironment(None, None, None, None, "10.3.0", "12.6.0", "Jetson (L4T)", "NVIDIA Jetson Orin Nano")


def test_doctor_on_this_machine_reports_each_piece_and_its_fix() -> None:
    done = subprocess.run([sys.executable, "-m", "segengine.cli", "doctor"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def line(area: str) -> str:
        return next(text for text in lines if text[8:].startswith(area))

    assert line("Python").startswith("ok") and line("numpy").startswith("ok")
    assert line("ONNX Runtime").startswith("ok") and "CPUExecutionProvider" in line("ONNX Runtime")
    assert line("PyAV").startswith("ok") and "H.264 decode yes" in line("PyAV")
    env = detect()
    if env.tensorrt_version is None:  # this project's CI: no GPU, no TensorRT
        assert line("TensorRT").startswith("no")
        fix = lines[lines.index(line("TensorRT")) + 1]
        assert "fix:" in fix and "pip install -e '.[tensorrt]'" in fix and "JetPack" in fix
    if env.driver is None:
        assert line("NVIDIA driver").startswith("no") and "backend auto → onnxruntime" in done.stdout
        assert line("NVDEC (PyAV)").startswith("no") and line("NVENC (PyAV)").startswith("no")
    if env.cuda_device is None:
        assert line("torch CUDA").startswith("no") and env.torch_version in line("torch CUDA")
    gui = line("OpenCV GUI (--show)")
    if gui.startswith("no"):
        assert "pip install opencv-python" in lines[lines.index(gui) + 1]
    assert line("OpenCV GStreamer")[:2] in ("ok", "no") and line("Jetson")


def test_doctor_exits_1_only_when_the_cpu_path_lacks_something() -> None:
    found = [Check("numpy", OK, "2.0", required=True), Check("TensorRT", MISSING, "not installed", "pip install")]
    text, code = report(found, CPU)
    assert code == 0 and "no      TensorRT" in text and "fix: pip install" in text
    text, code = report([*found, Check("ONNX Runtime", MISSING, "not installed", "pip install -e .", required=True)],
                        CPU)
    assert code == 1 and "MISSING ONNX Runtime" in text
    assert "required for the CPU path and missing: ONNX Runtime" in text


def test_doctor_on_machines_we_do_not_have() -> None:
    gpu = {c.area: c for c in checks(GPU)}
    assert gpu["torch"].status == OK and "RTX 4090 (compute 8.9)" in gpu["torch"].detail
    assert gpu["TensorRT"].status == OK and gpu["CUDA memory"].detail.endswith("through torch")
    assert gpu["Jetson"].status == INFO
    newer = {c.area: c for c in checks(replace(GPU, tensorrt_version="11.4.0"))}
    assert "--fp16/--int8 builds need TensorRT 10" in newer["TensorRT"].detail
    jetson = {c.area: c for c in checks(JETSON)}
    assert jetson["Jetson"].status == OK and "Orin Nano" in jetson["Jetson"].detail
    assert "cuda-python" in jetson["CUDA memory"].detail


@pytest.mark.parametrize(("env", "name", "reason"), [
    (CPU, "onnxruntime", "ONNX Runtime on the CPU (no CUDA GPU: no NVIDIA driver is loaded"),
    (CPU, "onnxruntime", "torch 2.13.0+cpu is a CPU-only build)"),
    (CPU, "onnxruntime", "not tensorrt: TensorRT is not installed (`pip install -e '.[tensorrt]'`"),
    (GPU, "tensorrt", "TensorRT 10.7.0 on NVIDIA GeForce RTX 4090"),
    (replace(GPU, tensorrt_version=None), "torch",
     "torch on CUDA GPU NVIDIA GeForce RTX 4090; not tensorrt: TensorRT is not installed"),
    (JETSON, "tensorrt", "TensorRT 10.3.0 on NVIDIA Jetson Orin Nano"),
    (replace(CPU, tensorrt_version="10.7.0"), "onnxruntime", "TensorRT 10.7.0 is installed but there is no usable"),
])
def test_auto_says_what_it_chose_and_why(env: GpuEnvironment, name: str, reason: str) -> None:
    choice = choose("auto", env)
    assert choice.name == name and reason in choice.reason


def test_auto_never_picks_torch_on_the_cpu_and_ranks_every_backend() -> None:
    assert set(NAMES) == {"auto", *BACKENDS} and set(BACKENDS) == {"onnxruntime", "openvino", "tensorrt", "torch"}
    report = available_report(CPU)
    assert report[0].startswith("tensorrt: no, TensorRT is not installed")
    assert any(line.startswith("onnxruntime: yes") for line in report)
    assert choose("auto", CPU).name == "onnxruntime"  # torch runs there, but slower than ONNX Runtime
    assert [line.split(":")[0] for line in available_report(GPU)] == ["tensorrt", "torch", "onnxruntime", "openvino"]


def test_asked_for_backends() -> None:
    with pytest.raises(BackendError, match=r"TensorRT: not installed.*pip install -e '\.\[tensorrt\]'"):
        choose("tensorrt", CPU)
    assert choose("tensorrt", GPU).name == "tensorrt"
    assert "on the CPU" in choose("torch", CPU).reason and "RTX 4090" in choose("torch", GPU).reason
    assert choose("onnxruntime", GPU).reason == "asked for"
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        choose("tpu", CPU)


def test_the_cli_offers_every_registered_backend() -> None:
    done = subprocess.run([sys.executable, "-m", "segengine.cli", "run", "--help"], capture_output=True, text=True,
                          timeout=60)
    help_text = " ".join(done.stdout.split())
    assert done.returncode == 0 and all(name in help_text for name in NAMES), help_text
