"""What this machine has for the GPU path, found without initialising anything heavy twice.

``registry`` (which backend), ``build`` (can an engine be built here) and ``doctor`` (the report)
all read one ``GpuEnvironment``; tests pass their own to cover machines we do not have.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

TENSORRT_FIX = ("on a machine with an NVIDIA GPU and driver: `pip install -e '.[tensorrt]'` "
                "(TensorRT 10 and cuda-python); on a Jetson, TensorRT comes with JetPack "
                "(`sudo apt install nvidia-jetpack`; in a venv, create it with --system-site-packages)")
TORCH_CUDA_FIX = ("install the CUDA build of torch on a machine with an NVIDIA GPU and driver: "
                  "`pip install torch` (on a Jetson: NVIDIA's torch wheel for your JetPack)")
DRIVER_FIX = "install the NVIDIA driver (nvidia-smi must list the GPU)"


@dataclass(frozen=True)
class GpuEnvironment:
    torch_version: str | None
    torch_cuda: str | None  # the CUDA version torch was built with; None for a CPU build
    cuda_device: str | None  # the first CUDA device's name, when torch can use one
    compute_capability: str | None
    tensorrt_version: str | None
    cuda_python_version: str | None
    driver: str | None  # the NVIDIA kernel driver's version line, when loaded
    jetson: str | None  # the Jetson model, when this is one
    openvino_version: str | None = None
    cpu_isa: tuple[str, ...] = ()  # the CPU's vector extensions that backends care about (cpu_isa())

    @property
    def cpu_bf16(self) -> bool:
        return has_bf16(self.cpu_isa)

    @property
    def has_cuda(self) -> bool:
        return self.memory_kind is not None

    @property
    def memory_kind(self) -> str | None:
        """Which CUDA memory implementation the TensorRT runtime would use."""
        if self.cuda_device is not None:
            return "torch"
        if self.cuda_python_version is not None and self.driver is not None:
            return "cuda-python"
        return None

    def no_gpu_reason(self) -> str:
        """Why there is no usable CUDA device, in one clause."""
        parts = []
        if self.driver is None:
            parts.append("no NVIDIA driver is loaded")
        if self.torch_version is None:
            parts.append("torch is not installed")
        elif self.torch_cuda is None:
            parts.append(f"torch {self.torch_version} is a CPU-only build")
        elif self.cuda_device is None:
            parts.append(f"torch {self.torch_version} (CUDA {self.torch_cuda}) sees no CUDA device")
        return "; ".join(parts) or "no CUDA device found"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_python_version() -> str | None:
    """cuda-python's version from its package metadata (12.6+ ships the bindings as cuda-bindings).
    Not ``find_spec("cuda")``: any ``cuda`` namespace package (other NVIDIA wheels, a folder) passes that."""
    return _version("cuda-python") or _version("cuda-bindings")


def _tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    # JetPack's TensorRT is a system package without pip metadata: ask the module itself.
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # a broken install (missing libnvinfer) is "not usable", said by doctor
        return None


def _driver() -> str | None:
    version = Path("/proc/driver/nvidia/version")
    if version.is_file():
        try:
            return version.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            return "loaded"
    if Path("/etc/nv_tegra_release").is_file():
        return "Jetson (L4T)"
    return "nvidia-smi present" if shutil.which("nvidia-smi") else None


def _jetson() -> str | None:
    model = Path("/proc/device-tree/model")
    if Path("/etc/nv_tegra_release").is_file() or os.environ.get("JETSON_MODEL"):
        try:
            return model.read_text().strip("\x00 \n") if model.is_file() else "Jetson"
        except OSError:
            return "Jetson"
    return None


_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The extensions in ``_ISA`` that cpuinfo lists (empty where there is none: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(flag for flag in _ISA if flag in flags)


def has_bf16(isa: tuple[str, ...]) -> bool:
    """The CPU computes bf16 natively (AVX-512 BF16 or AMX): where OpenVINO's bf16 is fast."""
    return any(flag in isa for flag in ("avx512_bf16", "amx_bf16"))


def detect() -> GpuEnvironment:
    torch_version = torch_cuda = device = capability = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_version, torch_cuda = torch.__version__, torch.version.cuda
        if torch_cuda is not None and torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            capability = f"{major}.{minor}"
    return GpuEnvironment(torch_version, torch_cuda, device, capability, _tensorrt_version(), cuda_python_version(),
                          _driver(), _jetson(), _version("openvino"), cpu_isa())
