"""``segengine doctor``: what this machine has for each path, and for every missing piece, the fix.

Exit status: 0 when everything the CPU path needs is present (the GPU pieces are optional and
only reported); 1 when something required is missing (Python too old, numpy, ONNX Runtime's
CPU provider, PyAV's H.264 decoder).
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from segengine.backends.probe import DRIVER_FIX, TENSORRT_FIX, TORCH_CUDA_FIX, GpuEnvironment, detect

OK, MISSING, INFO = "ok", "missing", "info"


@dataclass(frozen=True)
class Check:
    area: str
    status: str  # ok, missing or info
    detail: str
    fix: str = ""
    required: bool = False

    def lines(self) -> list[str]:
        mark = {OK: "ok", MISSING: "MISSING" if self.required else "no", INFO: "--"}[self.status]
        out = [f"{mark:<8}{self.area:<22}{self.detail}"]
        if self.fix and self.status == MISSING:
            out.append(f"{'':<8}{'':<22}fix: {self.fix}")
        return out


def _python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("Python", OK if ok else MISSING, f"{platform.python_version()} ({sys.executable})",
                 "use Python 3.10 or newer", required=True)


def _numpy() -> Check:
    if importlib.util.find_spec("numpy") is None:
        return Check("numpy", MISSING, "not installed", "pip install -e .", required=True)
    import numpy

    return Check("numpy", OK, numpy.__version__, required=True)


def _torch(env: GpuEnvironment) -> Check:
    if env.torch_version is None:
        return Check("torch", MISSING, "not installed (needed to export graphs)", "see README, Install", required=True)
    if env.cuda_device:
        return Check("torch", OK, f"{env.torch_version}, CUDA {env.torch_cuda}: {env.cuda_device} "
                                  f"(compute {env.compute_capability})")
    what = ("a CPU-only build" if env.torch_cuda is None
            else f"built for CUDA {env.torch_cuda}, but no CUDA device is visible")
    return Check("torch CUDA", MISSING, f"{env.torch_version}: {what} (--backend torch runs on the CPU)",
                 TORCH_CUDA_FIX)


def _gpu(env: GpuEnvironment) -> Check:
    if env.driver is None:
        return Check("NVIDIA driver", MISSING, "not loaded (/proc/driver/nvidia and nvidia-smi not found)", DRIVER_FIX)
    return Check("NVIDIA driver", OK, env.driver)


def _tensorrt(env: GpuEnvironment) -> Check:
    if env.tensorrt_version is None:
        return Check("TensorRT", MISSING, "not installed (segengine build, --backend tensorrt)", TENSORRT_FIX)
    note = ""
    if env.tensorrt_version.split(".")[0].isdigit() and int(env.tensorrt_version.split(".")[0]) >= 11:
        note = " (TensorRT 11: --fp16/--int8 builds need TensorRT 10; fp32 builds work)"
    return Check("TensorRT", OK, env.tensorrt_version + note)


def _cuda_memory(env: GpuEnvironment) -> Check:
    if env.memory_kind is not None:
        return Check("CUDA memory", OK, f"pinned buffers and streams through {env.memory_kind}")
    have = f"cuda-python {env.cuda_python_version} (no driver)" if env.cuda_python_version else "no cuda-python"
    return Check("CUDA memory", MISSING, f"{have}, no CUDA torch (the TensorRT runtime needs one)",
                 f"`pip install cuda-python`, or {TORCH_CUDA_FIX}")


def _onnxruntime() -> Check:
    if importlib.util.find_spec("onnxruntime") is None:
        return Check("ONNX Runtime", MISSING, "not installed", "pip install -e .", required=True)
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    ok = "CPUExecutionProvider" in providers
    return Check("ONNX Runtime", OK if ok else MISSING, f"{onnxruntime.__version__}: {', '.join(providers)}",
                 "pip install --force-reinstall onnxruntime", required=True)


def _openvino(env: GpuEnvironment) -> Check:
    isa = ", ".join(env.cpu_isa) or "none of AVX2/AVX-512/AMX seen"
    if env.openvino_version is None:
        return Check("OpenVINO", MISSING, f"not installed (CPU: {isa})",
                     "pip install openvino (bf16 on CPUs with AVX-512 BF16 or AMX)" if env.cpu_bf16
                     else "pip install openvino")
    mode = "bf16 where the accuracy guard allows" if env.cpu_bf16 else "fp32 (the CPU has no AVX-512 BF16 or AMX)"
    try:
        int8 = f"INT8 models by NNCF {importlib.metadata.version('nncf')} (`segengine build --backend openvino --int8`)"
    except importlib.metadata.PackageNotFoundError:
        int8 = "no INT8 (`pip install -e '.[int8]'` for NNCF)"
    return Check("OpenVINO", OK, f"{env.openvino_version}, {mode}; {int8}; CPU: {isa}")


def _pyav() -> list[Check]:
    if importlib.util.find_spec("av") is None:
        return [Check("PyAV", MISSING, "not installed", "pip install -e .", required=True)]
    import av

    codecs = av.codecs_available
    ffmpeg = ".".join(str(v) for v in av.library_versions.get("libavcodec", ()))
    out = [Check("PyAV", OK if "h264" in codecs else MISSING,
                 f"{av.__version__} (libavcodec {ffmpeg}); H.264 decode {'yes' if 'h264' in codecs else 'no'}, "
                 f"libx264 encode {'yes' if 'libx264' in codecs else 'no'}",
                 "pip install --force-reinstall av (its wheels bundle FFmpeg with H.264)", required=True)]
    for area, names, lib in (("NVDEC (PyAV)", ("h264_cuvid", "hevc_cuvid"), "nvcuvid"),
                             ("NVENC (PyAV)", ("h264_nvenc", "hevc_nvenc"), "nvidia-encode")):
        built = [n for n in names if n in codecs]
        if not built:
            out.append(Check(area, MISSING, "not in PyAV's FFmpeg build",
                             "a PyAV built against an FFmpeg with --enable-nvdec/--enable-nvenc"))
        elif ctypes.util.find_library(lib) is None:
            out.append(Check(area, MISSING, f"{', '.join(built)} built in, but lib{lib} (from the NVIDIA driver) "
                                            "is not found", DRIVER_FIX))
        else:
            out.append(Check(area, OK, f"{', '.join(built)} with lib{lib}"))
    return out


def _opencv() -> list[Check]:
    if importlib.util.find_spec("cv2") is None:
        return [Check("OpenCV", MISSING, "not installed", "pip install -e .", required=True)]
    import cv2

    info = {}
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        info.setdefault(key.strip(), value.strip())
    gui = info.get("GUI", "NONE")
    gst = info.get("GStreamer", "NO")
    return [
        Check("OpenCV", OK, cv2.__version__, required=True),
        Check("OpenCV GUI (--show)", OK if gui not in ("NONE", "") else MISSING, gui,
              "pip uninstall opencv-python-headless && pip install opencv-python (a display is needed too)"),
        Check("OpenCV GStreamer", OK if gst.startswith("YES") else MISSING, gst,
              "OpenCV built with GStreamer (on a Jetson the system python3-opencv has it; the PyPI wheels do not)"),
    ]


def _jetson(env: GpuEnvironment) -> Check:
    if env.jetson is None:
        return Check("Jetson", INFO, "not a Jetson")
    release = Path("/etc/nv_tegra_release")
    l4t = release.read_text().splitlines()[0].strip() if release.is_file() else "L4T release unknown"
    jetpack = "JetPack version unknown"
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True,
                              text=True, timeout=10)
        if done.returncode == 0 and done.stdout:
            jetpack = f"JetPack {done.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Check("Jetson", OK, f"{env.jetson}; {l4t}; {jetpack}")


def checks(env: GpuEnvironment | None = None) -> list[Check]:
    env = env or detect()
    steps: list[Callable[[], Check | Iterable[Check]]] = [
        _python, _numpy, lambda: _torch(env), _onnxruntime, lambda: _openvino(env), _pyav, _opencv,
        lambda: _gpu(env), lambda: _tensorrt(env), lambda: _cuda_memory(env), lambda: _jetson(env)]
    out: list[Check] = []
    for step in steps:
        found = step()
        out.extend([found] if isinstance(found, Check) else found)
    return out


def paths(env: GpuEnvironment) -> list[str]:
    """Which backends can run here, fastest first, and what auto picks."""
    from segengine.backends.registry import available_report, choose

    choice = choose("auto", env)
    return [*(f"backend {line}" for line in available_report(env)), f"backend auto → {choice.name}: {choice.reason}"]


def report(found: list[Check], env: GpuEnvironment) -> tuple[str, int]:
    lines = [f"segengine doctor: {platform.system()} {platform.machine()}"]
    lines += [line for check in found for line in check.lines()]
    lines += [""] + paths(env)
    missing_required = [c.area for c in found if c.required and c.status == MISSING]
    if missing_required:
        lines.append(f"required for the CPU path and missing: {', '.join(missing_required)}")
    return "\n".join(lines), 1 if missing_required else 0


def main() -> int:
    env = detect()
    text, code = report(checks(env), env)
    print(text)
    return code
