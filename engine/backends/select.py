"""Which backend runs the graph: asked for by name, or chosen by ``auto`` with the reason said."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from segengine.backends.base import Backend
from segengine.backends.probe import GpuEnvironment, detect
from segengine.errors import BackendError, ConfigError
from segengine.models import zoo

NAMES = ("auto", "onnxruntime", "tensorrt", "torch")


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def choose(requested: str, env: GpuEnvironment | None = None) -> Choice:
    """auto: tensorrt → torch on CUDA → onnxruntime, in that order of speed. A named backend
    that cannot run here is refused now, with what to install, not after the graph is built."""
    if requested not in NAMES:
        raise ConfigError(f"unknown backend {requested!r}; choose one of {', '.join(NAMES)}")
    if requested == "onnxruntime":
        return Choice("onnxruntime", "asked for")
    env = env or detect()
    if requested == "tensorrt":
        from segengine.build import require_tensorrt

        require_tensorrt(env)  # raises with every missing piece and its fix
        return Choice("tensorrt", f"asked for; TensorRT {env.tensorrt_version} on {_gpu(env)}")
    if requested == "torch":
        where = f"CUDA GPU {env.cuda_device}" if env.cuda_device else f"the CPU ({env.no_gpu_reason()})"
        return Choice("torch", f"asked for; on {where}")
    if env.tensorrt_version is not None and env.has_cuda:
        return Choice("tensorrt", f"TensorRT {env.tensorrt_version} and a CUDA GPU ({_gpu(env)}) are present")
    if env.cuda_device is not None:
        return Choice("torch", f"CUDA GPU {env.cuda_device} through torch; TensorRT is not installed "
                               "(`pip install -e '.[tensorrt]'` for the fastest path)")
    if env.tensorrt_version is not None:
        return Choice("onnxruntime", f"TensorRT {env.tensorrt_version} is installed but there is no usable CUDA "
                                     f"GPU ({env.no_gpu_reason()}); ONNX Runtime on the CPU")
    return Choice("onnxruntime", f"no CUDA GPU ({env.no_gpu_reason()}); ONNX Runtime on the CPU")


def _gpu(env: GpuEnvironment) -> str:
    return env.cuda_device or env.jetson or "the CUDA device"


def open_backend(choice: Choice, name: str, frame_size: tuple[int, int], *, model_file: Path | None = None,
                 classes: Path | None = None, dirs: zoo.WeightDirs | None = None) -> Backend:
    """A backend running preset/model ``name`` (or the user's ``model_file`` graph) for ``frame_size``."""
    dirs = dirs or zoo.WeightDirs.from_env()
    if choice.name == "torch":
        if model_file is not None:
            raise BackendError(f"{model_file}: an ONNX model runs on --backend onnxruntime or tensorrt, not torch")
        from segengine.backends.torch import TorchBackend
        from segengine.graph.compose import build_graph

        return TorchBackend(build_graph(name, frame_size, dirs))
    from segengine.graph.cache import cached_custom_graph, cached_graph

    if model_file is not None:
        graph = cached_custom_graph(model_file, frame_size, classes=classes, dirs=dirs)
        label = f"{Path(model_file).stem}-{frame_size[1]}x{frame_size[0]}"
    else:
        graph = cached_graph(name, frame_size, dirs=dirs)
        label = f"{name}-{frame_size[1]}x{frame_size[0]}"
    if choice.name == "tensorrt":
        return _open_tensorrt(graph, label, dirs)
    from segengine.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(graph)


def _open_tensorrt(graph: Path, label: str, dirs: zoo.WeightDirs) -> Backend:
    """The cached engine for ``graph`` (built when missing); an engine TensorRT refuses is rebuilt once."""
    import onnx

    from segengine.backends.cuda import open_memory
    from segengine.backends.engine_cache import EngineCache
    from segengine.build import BuildRequest, build_into, engine_folder, engine_for_run, require_tensorrt
    from segengine.graph.compose import read_description

    env = detect()
    require_tensorrt(env)
    from segengine.backends.tensorrt import TensorRTBackend

    description = read_description(onnx.load(str(graph), load_external_data=False))
    memory = open_memory("auto")
    try:
        path, key = engine_for_run(graph, env, dirs, memory, label=label)
        try:
            return TensorRTBackend(path, description, memory)
        except BackendError as exc:
            print(f"segengine: {exc}; rebuilding it", file=sys.stderr)
            cache = EngineCache(engine_folder(dirs))
            cache.discard(key)
            path = build_into(cache, key, graph, BuildRequest(label, precision=key.precision), memory,
                              out=sys.stderr)
            return TensorRTBackend(path, description, memory)
    except BaseException:
        memory.close()
        raise
