"""Which backend runs the graph: asked for by name, or chosen by ``auto`` with the reason said."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engine.backends.base import Backend
from engine.errors import BackendError, ConfigError
from models import zoo

NAMES = ("auto", "onnxruntime", "tensorrt", "torch")


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def _cuda() -> str | None:
    """The CUDA device's name when torch can use one."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def choose(requested: str) -> Choice:
    """auto: tensorrt → torch on CUDA → onnxruntime, in that order of speed."""
    if requested not in NAMES:
        raise ConfigError(f"unknown backend {requested!r}; choose one of {', '.join(NAMES)}")
    if requested != "auto":
        return Choice(requested, "asked for")
    gpu = _cuda()
    if gpu and importlib.util.find_spec("tensorrt") is not None:
        return Choice("tensorrt", f"TensorRT and a CUDA GPU ({gpu}) are present")
    if gpu:
        return Choice("torch", f"CUDA GPU {gpu} through torch; TensorRT is not installed")
    return Choice("onnxruntime", "no CUDA GPU; ONNX Runtime on the CPU")


def open_backend(choice: Choice, name: str, frame_size: tuple[int, int], *, model_file: Path | None = None,
                 classes: Path | None = None, dirs: zoo.WeightDirs | None = None) -> Backend:
    """A backend running preset/model ``name`` (or the user's ``model_file`` graph) for ``frame_size``."""
    if choice.name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendError("TensorRT is not installed: on a machine with an NVIDIA GPU, `pip install tensorrt`; "
                               "or use --backend onnxruntime (CPU) or --backend torch")
        raise BackendError("this version of segengine has no TensorRT engine runner yet; "
                           "use --backend torch on the GPU or --backend onnxruntime")
    if choice.name == "torch":
        if model_file is not None:
            raise BackendError(f"{model_file}: an ONNX model runs on --backend onnxruntime or tensorrt, not torch")
        from engine.backends.torch import TorchBackend
        from engine.graph.compose import build_graph

        return TorchBackend(build_graph(name, frame_size, dirs))
    from engine.backends.onnxruntime import OnnxRuntimeBackend
    from engine.graph.cache import cached_custom_graph, cached_graph

    if model_file is not None:
        return OnnxRuntimeBackend(cached_custom_graph(model_file, frame_size, classes=classes, dirs=dirs))

    return OnnxRuntimeBackend(cached_graph(name, frame_size, dirs=dirs))
