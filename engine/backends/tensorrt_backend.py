"""TensorRT backend: the graph's ONNX compiled into a cached engine (built on first use), run on CUDA
streams from pinned buffers. Importable without TensorRT; ``tensorrt.py`` is the only TensorRT import.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import numpy as np

from segengine.backends.base import BackendInfo, BackendOptions
from segengine.backends.padding import BatchPadder
from segengine.backends.probe import GpuEnvironment, detect
from segengine.errors import BackendError
from segengine.graph.spec import GraphSpec
from segengine.models import zoo


class TensorRTBackend(BackendInfo):
    name: ClassVar[str] = "tensorrt"
    graph_format: ClassVar[str] = "onnx"

    def __init__(self, graph: Path, spec: GraphSpec, options: BackendOptions | None = None) -> None:
        """The cached engine for ``graph`` on this GPU (built when missing); an engine TensorRT refuses
        is rebuilt once."""
        from segengine.backends.cuda import open_memory
        from segengine.backends.engine_cache import EngineCache
        from segengine.build import BuildRequest, build_into, engine_folder, engine_for_run, require_tensorrt

        options = options or BackendOptions()
        env = detect()
        require_tensorrt(env)
        from segengine.backends.tensorrt import EngineRunner

        self.spec = spec
        dirs = options.dirs or zoo.WeightDirs.from_env()
        batch = spec.input.max_batch  # a graph with a batch axis (many streams) runs padded to its max
        self._padder = BatchPadder(batch, (*spec.frame_size, 3))
        label = f"{spec.name}-{spec.frame_size[1]}x{spec.frame_size[0]}" + (f"-b{batch}" if batch > 1 else "")
        memory = open_memory("auto")
        try:
            path, key = engine_for_run(graph, env, dirs, memory, label=label, max_batch=batch)
            try:
                self._runner = EngineRunner(path, memory, batch=batch)
            except BackendError as exc:
                print(f"segengine: {exc}; rebuilding it", file=sys.stderr)
                cache = EngineCache(engine_folder(dirs))
                cache.discard(key)
                path = build_into(cache, key, graph, BuildRequest(label, precision=key.precision), memory,
                                  out=sys.stderr)
                self._runner = EngineRunner(path, memory, batch=batch)
        except BaseException:
            memory.close()
            raise

    @classmethod
    def available(cls, env: GpuEnvironment) -> str | None:
        if env.tensorrt_version is None:
            return "TensorRT is not installed (`pip install -e '.[tensorrt]'` for the fastest path)"
        if not env.has_cuda:
            return (f"TensorRT {env.tensorrt_version} is installed but there is no usable CUDA GPU "
                    f"({env.no_gpu_reason()})")
        return None

    @classmethod
    def require(cls, env: GpuEnvironment) -> None:
        from segengine.build import require_tensorrt

        require_tensorrt(env)

    @classmethod
    def speed(cls, env: GpuEnvironment, models: tuple[str, ...] = ()) -> int:
        return 30

    @classmethod
    def where(cls, env: GpuEnvironment) -> str:
        return f"TensorRT {env.tensorrt_version} on {env.cuda_device or env.jetson or 'the CUDA device'}"

    depth = 2  # the runner's two buffer sets: frame N+1's copy overlaps frame N's compute

    # The runner refuses frames once closed, and closes once: nothing to add here.
    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        return self._padder.cut(self._runner.infer(self._padder.pad(frame)))

    def submit(self, frame: np.ndarray) -> None:
        self._runner.submit(self._padder.pad(frame))

    def collect(self) -> dict[str, np.ndarray]:
        return self._padder.cut(self._runner.collect())

    def close(self) -> None:
        self._runner.close()
