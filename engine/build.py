"""``segengine build``: a TensorRT engine for a preset (or an ONNX file), cached for ``run`` to find.

Everything here runs on any machine: the checks (flags, target, TensorRT and a GPU present),
the shape profile, the cache key and the lookup. Only ``segengine.backends.tensorrt`` touches
TensorRT, imported once a GPU and TensorRT are known to be there.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import onnx

from segengine.backends.build_progress import BuildProgress
from segengine.backends.cuda import Memory
from segengine.backends.engine_cache import EngineCache, EngineKey, Lookup, ProfileEntry
from segengine.backends.probe import DRIVER_FIX, TENSORRT_FIX, TORCH_CUDA_FIX, GpuEnvironment
from segengine.download import sha256_of
from segengine.errors import BackendError, ConfigError
from segengine.models import zoo


@dataclass(frozen=True)
class BuildRequest:
    target: str  # a preset or model name, or a path to an .onnx file
    frame_size: tuple[int, int] = (720, 1280)  # (height, width), for presets
    precision: str = "fp32"
    calib: str | None = None  # a source URI of real frames, for int8
    calib_frames: int = 64
    workspace_gb: float = 2.0
    max_batch: int = 1
    force: bool = False  # rebuild even when a valid engine is cached

    def check(self) -> None:
        """Flag combinations, said before anything slow happens."""
        if self.precision == "int8" and not self.calib:
            raise ConfigError("--int8 needs real frames to calibrate on: add --calib VIDEO (a file, folder "
                              "or any source `segengine run` takes), ideally from the camera the engine will see")
        if self.calib and self.precision != "int8":
            raise ConfigError("--calib is only used with --int8")
        if self.workspace_gb <= 0:
            raise ConfigError(f"--workspace {self.workspace_gb}: expected a positive number of GB")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}: expected 1 or more")
        if self.calib:
            from segengine.capture.factory import open_source

            open_source(self.calib)  # a missing file or bad URI is reported now, not after the export


def engine_folder(dirs: zoo.WeightDirs) -> Path:
    return dirs.cache.parent / "engines"


def is_onnx_file(target: str) -> bool:
    return target.lower().endswith(".onnx")


def check_target(target: str) -> None:
    if is_onnx_file(target):
        if not Path(target).is_file():
            raise ConfigError(f"{target}: no such ONNX file")
        return
    from segengine.graph.compose import model_names

    model_names(target)  # unknown names are said with the list of presets and models


def require_tensorrt(env: GpuEnvironment) -> None:
    """Raise with every missing piece and its fix, when an engine cannot be built or run here."""
    missing = []
    if env.tensorrt_version is None:
        missing.append(f"TensorRT: not installed (`import tensorrt` fails). Fix: {TENSORRT_FIX}")
    if env.driver is None and env.jetson is None:
        missing.append("NVIDIA GPU: no NVIDIA driver is loaded (/proc/driver/nvidia and nvidia-smi not found). "
                       f"Fix: {DRIVER_FIX}")
    if env.memory_kind is None:
        missing.append("CUDA memory (torch with CUDA, or cuda-python): "
                       + (f"torch {env.torch_version} is a CPU-only build" if env.torch_version and not env.torch_cuda
                          else "neither is usable")
                       + f". Fix: `pip install cuda-python`, or {TORCH_CUDA_FIX}")
    if not missing:
        return
    raise BackendError("TensorRT engines need TensorRT and an NVIDIA GPU; missing here:\n  - "
                       + "\n  - ".join(missing)
                       + "\nWithout a GPU, `segengine run` uses ONNX Runtime on the CPU (no build needed); "
                         "`segengine doctor` checks everything.")


def onnx_inputs(path: Path) -> list[tuple[str, tuple[int | str, ...]]]:
    """The graph's real inputs (initialisers excluded) with their dims; a symbolic dim is its name."""
    model = onnx.load(str(path), load_external_data=False)
    initialisers = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in initialisers:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in value.type.tensor_type.shape.dim)
        out.append((value.name, dims))
    return out


def shape_profile(inputs: list[tuple[str, tuple[int | str, ...]]], max_batch: int) -> tuple[ProfileEntry, ...]:
    """min/opt/max per input: a dynamic batch axis spans 1..max_batch (opt at max); all else fixed."""
    profile = []
    for name, dims in inputs:
        if not dims:
            raise ConfigError(f"input {name} has no shape; export the graph with fixed shapes")
        for axis, dim in enumerate(dims[1:], start=1):
            if not isinstance(dim, int) or dim <= 0:
                raise ConfigError(f"input {name} has a dynamic axis {axis} ({dim}); only the batch axis may be "
                                  "dynamic: export the graph at a fixed frame size (segengine export --frame-size)")
        rest = tuple(int(d) for d in dims[1:])
        batch = dims[0]
        if isinstance(batch, int) and batch > 0:
            if max_batch > batch:
                raise ConfigError(f"--max-batch {max_batch}: the graph's input {name} has a fixed batch of {batch}; "
                                  "export it with a dynamic batch axis to build a batch profile")
            shapes = ((batch, *rest),) * 3
        else:
            shapes = ((1, *rest), (max_batch, *rest), (max_batch, *rest))
        profile.append((name, *shapes))
    return tuple(profile)  # type: ignore[return-value]  # (name, min, opt, max) each


def make_key(model: Path, env: GpuEnvironment, gpu: tuple[str, str], precision: str,
             profile: tuple[ProfileEntry, ...], calibration: str = "", label: str = "model") -> EngineKey:
    return EngineKey(sha256_of(model), env.tensorrt_version or "none", gpu[0], gpu[1], precision, profile,
                     hashlib.sha256(calibration.encode()).hexdigest()[:16] if calibration else "", label)


def graph_for(request: BuildRequest, dirs: zoo.WeightDirs) -> Path:
    if is_onnx_file(request.target):
        return Path(request.target)
    from segengine.graph.cache import cached_graph

    return cached_graph(request.target, request.frame_size, dirs=dirs, max_batch=request.max_batch)


def build(request: BuildRequest, env: GpuEnvironment, dirs: zoo.WeightDirs, *, out: TextIO | None = None,
          memory: Memory | None = None) -> tuple[Path, Lookup]:
    """Check, export the graph, then build (or reuse) the engine; returns its path and what the cache said."""
    out = out if out is not None else sys.stderr
    request.check()
    check_target(request.target)
    require_tensorrt(env)
    from segengine.backends import tensorrt as trt_backend
    from segengine.backends.cuda import open_memory

    if not trt_backend.supports(request.precision):
        raise BackendError(f"TensorRT {env.tensorrt_version} has no {request.precision.upper()} builder flag "
                           "(TensorRT 11 builds strongly typed graphs only): install TensorRT 10 "
                           "(`pip install 'tensorrt-cu12>=10,<11'`: CUDA 12 wheels), or build without --fp16/--int8")
    memory = memory or open_memory("auto")
    try:
        print(f"segengine: graph for {request.target}…", file=out, flush=True)
        graph = graph_for(request, dirs)
        gpu = memory.gpu()
        profile = shape_profile(onnx_inputs(graph), request.max_batch)
        label = Path(request.target).stem if is_onnx_file(request.target) else \
            f"{request.target}-{request.frame_size[1]}x{request.frame_size[0]}"
        calibration = ""
        if request.precision == "int8":
            from segengine.backends.calibration import calibration_identity

            calibration = calibration_identity(str(request.calib), request.calib_frames, 1)
        key = make_key(graph, env, (gpu.name, gpu.compute_capability), request.precision, profile, calibration, label)
        cache = EngineCache(engine_folder(dirs))
        lookup = cache.lookup(key)
        if lookup.usable and not request.force:
            print(f"segengine: {lookup.explain()} is up to date", file=out)
            return lookup.engine, lookup
        if lookup.status in ("mismatch", "corrupt"):
            print(f"segengine: {lookup.explain()}; rebuilding", file=out)
        return build_into(cache, key, graph, request, memory, out=out), lookup
    finally:
        memory.close()


def build_into(cache: EngineCache, key: EngineKey, graph: Path, request: BuildRequest, memory: Memory, *,
               out: TextIO) -> Path:
    from segengine.backends import tensorrt as trt_backend
    from segengine.backends.calibration import CalibrationFeeder, CalibrationTable

    cache.folder.mkdir(parents=True, exist_ok=True)  # the timing cache and calibration table live there too
    feeder = table = None
    if key.precision == "int8":
        shape = key.profile[0][1]  # the frame input's (min) shape: batch, height, width, 3
        table = CalibrationTable(cache.calibration_table(key.model_sha256, key.calibration))
        feeder = CalibrationFeeder(str(request.calib), memory, frame_size=tuple(shape[1:3]),  # type: ignore[arg-type]
                                   frames=request.calib_frames)
        if table.read() is not None:
            print(f"segengine: reusing the calibration table {table.path}", file=out)
    progress = BuildProgress(out, label=f"building the {key.precision} TensorRT engine (minutes on a Jetson)")
    try:
        with progress, progress.cancel_on_sigint():
            try:
                plan = trt_backend.build_serialized(graph, precision=key.precision, workspace_gb=request.workspace_gb,
                                                    profile=key.profile, progress=progress, feeder=feeder, table=table,
                                                    timing_cache=cache.timing_cache(key.tensorrt_version,
                                                                                    key.gpu_name,
                                                                                    key.compute_capability))
            except KeyboardInterrupt:
                progress.cancel()
                raise
        progress.done()
    finally:
        if feeder is not None:
            feeder.close()
    return cache.store(key, plan)


def engine_for_run(graph: Path, env: GpuEnvironment, dirs: zoo.WeightDirs, memory: Memory, *,
                   label: str, out: TextIO | None = None, max_batch: int = 1) -> tuple[Path, EngineKey]:
    """The best valid cached engine for ``graph`` on this machine (int8 > fp16 > fp32) whose batch profile
    reaches ``max_batch``, else a new fp16 one with the profile 1..max_batch."""
    from segengine.backends import tensorrt as trt_backend

    out = out if out is not None else sys.stderr
    gpu = memory.gpu()
    cache = EngineCache(engine_folder(dirs))
    model_sha = sha256_of(graph)
    found, stale = cache.candidates(model_sha, env.tensorrt_version or "none", gpu.name, gpu.compute_capability,
                                    batch=max_batch)
    for reason in stale:
        print(f"segengine: not using {reason}", file=out)
    if found:
        return found[0]
    precision = "fp16" if trt_backend.supports("fp16") else "fp32"
    profile = shape_profile(onnx_inputs(graph), max_batch)
    key = make_key(graph, env, (gpu.name, gpu.compute_capability), precision, profile, label=label)
    print(f"segengine: no TensorRT engine for {label} on {gpu.name} yet: building one ({precision}; once per "
          f"frame size; `segengine build` does it ahead of time)", file=out)
    path = build_into(cache, key, graph, BuildRequest(label, precision=precision), memory, out=out)
    return path, key
