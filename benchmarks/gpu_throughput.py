"""GPU: bare engine throughput vs `segengine run` end to end, on the same video, in one run.

    python benchmarks/gpu_throughput.py [VIDEO] [--backend tensorrt|torch] [--precision fp16] [--repeat 1]
                                        [--batch 1 2 4 8]

Bare: every frame decoded into memory first, then the engine alone, two ways for TensorRT:
``infer`` (one frame at a time, synchronous) and ``submit``/``collect`` with one frame in
flight (the copy of frame N+1 overlaps the compute of frame N). For torch, ``infer`` only.
End to end: `segengine run --backend BACKEND` on the same video (decode, inference, tracking,
lanes, rendering, H.264 MP4 and JSONL), the engine already built and cached, so neither
export nor build is timed. Then frames a second at each ``--batch`` size (the graph with a batch axis
that many streams share; TensorRT builds its profile 1..B), against batch 1. Needs an NVIDIA GPU;
says what is missing otherwise.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"


def _timed(step, frames: list) -> float:
    step(frames[0])  # warm-up: lazy allocations, CUDA graph capture, cudnn autotuning
    step(frames[0])
    start = time.perf_counter()
    for frame in frames:
        step(frame)
    return len(frames) / (time.perf_counter() - start)


def bare_tensorrt(graph: Path, label: str, frames: list) -> dict[str, object]:
    from segengine.backends.cuda import open_memory
    from segengine.backends.probe import detect
    from segengine.backends.tensorrt import EngineRunner
    from segengine.build import engine_for_run
    from segengine.models.zoo import WeightDirs

    memory = open_memory("auto")
    path, key = engine_for_run(graph, detect(), WeightDirs.from_env(), memory, label=label)
    backend = EngineRunner(path, memory)
    try:
        sync = _timed(backend.infer, frames)
        backend.submit(frames[0])
        backend.collect()
        start = time.perf_counter()
        backend.submit(frames[0])
        for frame in frames[1:]:
            backend.submit(frame)
            backend.collect()
        backend.collect()
        overlapped = len(frames) / (time.perf_counter() - start)
        return {"engine": key.precision, "infer": sync, "submit/collect": overlapped,
                "cuda graphs": backend._run().graphs_used}
    finally:
        backend.close()


def bare_torch(name: str, size: tuple[int, int], frames: list) -> dict[str, object]:
    from segengine.backends.base import BackendOptions
    from segengine.backends.torch import TorchBackend
    from segengine.graph.compose import build_graph
    from segengine.models.zoo import WeightDirs

    graph = build_graph(name, size, WeightDirs.from_env())
    backend = TorchBackend(graph, graph.spec(), BackendOptions(device="cuda"))
    try:
        return {"infer": _timed(backend.infer, frames)}
    finally:
        backend.close()


def batched(backend_name: str, preset: str, size: tuple[int, int], frames: list, batch: int) -> float:
    """Frames a second through the engine in batches of ``batch`` frames (the many-streams path: a graph
    with a batch axis; TensorRT runs it at its max batch, its profile 1..batch)."""
    import numpy as np

    from segengine.backends.base import BackendOptions
    from segengine.backends.registry import choose, open_backend, prepare_for
    from segengine.graph.prepare import GraphTarget
    from segengine.models.zoo import WeightDirs

    dirs = WeightDirs.from_env()
    choice = choose(backend_name)
    device = "cuda" if backend_name == "torch" else None
    backend = open_backend(choice, prepare_for(choice, GraphTarget(preset), size, dirs, max_batch=batch),
                           BackendOptions(device=device, dirs=dirs))
    try:
        batches = [np.stack(frames[i:i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
        return _timed(backend.infer, batches) * batch
    finally:
        backend.close()


def end_to_end(video: Path, preset: str, backend: str, frames: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "segengine.cli", "run", str(video), "-o", f"{tmp}/out.mp4",
               "--json", f"{tmp}/out.jsonl", "--preset", preset, "--backend", backend]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        with av.open(f"{tmp}/out.mp4") as container:
            assert container.streams.video[0].frames == frames, "end to end lost frames"
    summary = re.search(r"throughput ([0-9.]+) fps", done.stderr)
    assert summary, done.stderr
    return float(summary.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--preset", default="road")
    parser.add_argument("--backend", choices=("tensorrt", "torch"), default="tensorrt")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 2, 4, 8],
                        help="batch sizes to time (the many-streams path); none: skip")
    args = parser.parse_args()

    from segengine.backends.probe import detect
    from segengine.backends.registry import choose
    from segengine.errors import EngineError

    env = detect()
    try:
        choose(args.backend, env)
        if args.backend == "torch" and env.cuda_device is None:
            raise EngineError(f"no CUDA device for torch: {env.no_gpu_reason()}")
    except EngineError as exc:
        print(f"gpu_throughput: cannot run here: {exc}", file=sys.stderr)
        return 2
    with av.open(str(args.video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    size = frames[0].shape[:2]
    from segengine.graph.cache import cached_graph
    from segengine.models.zoo import WeightDirs

    graph = cached_graph(args.preset, size, dirs=WeightDirs.from_env())
    label = f"{args.preset}-{size[1]}x{size[0]}"
    print(f"{args.video.name}: {len(frames)} frames {size[1]}x{size[0]}, preset {args.preset}, backend {args.backend}")
    print(f"machine: {env.cuda_device or env.jetson} (compute {env.compute_capability}), driver {env.driver}, "
          f"TensorRT {env.tensorrt_version}, torch {env.torch_version}, python {platform.python_version()}")
    for i in range(args.repeat):
        if args.backend == "tensorrt":
            bare = bare_tensorrt(graph, label, frames)
        else:
            bare = bare_torch(args.preset, size, frames)
        best = max(float(v) for k, v in bare.items() if k in ("infer", "submit/collect"))  # type: ignore[arg-type]
        e2e = end_to_end(args.video, args.preset, args.backend, len(frames))
        parts = ", ".join(f"{k} {v:.1f} fps" if isinstance(v, float) else f"{k} {v}" for k, v in bare.items())
        print(f"run {i + 1}: bare {parts} | segengine run {e2e:.1f} fps, overhead {(best / e2e - 1) * 100:.1f} %")
    rates = {b: batched(args.backend, args.preset, size, frames, b) for b in args.batch}
    for b, fps in rates.items():
        ratio = f" ({fps / rates[1]:.2f}x batch 1)" if 1 in rates else ""
        print(f"batch {b}: {fps:.1f} frames/s{ratio}")
    if 1 in rates and 8 in rates:
        print(f"target batch 8 >= 3x batch 1: {'met' if rates[8] >= 3 * rates[1] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
