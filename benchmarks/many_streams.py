"""Many streams through one engine: batched vs one stream at a time vs one process per stream, in one run.

    python benchmarks/many_streams.py [--streams 1 2 4 8] [--backend onnxruntime openvino] [--frames 60]

Files: N copies of the shared road video (the first ``--frames`` frames of each), no outputs, so the
engine is what is measured (decode, inference, tracking and lanes; no rendering or encoding):
- **batched**: one ``MultiPipeline``, batches of up to N frames (one per stream);
- **sequential**: the single-stream ``Pipeline`` on each file, one after another;
- **processes**: N ``segengine run`` processes at once (each loads its own graph; their start-up is
  left out: each one's steady-state time from its own summary).
Total frames a second, and p99 latency per stream (from a frame's read to its result; the worst stream).

Live: N synthetic live cameras (``--live-fps`` each, at the video's size) batched, and one live camera
beside a lossless file; p99 latency per stream against the engine's own time per frame (one frame
alone through the graph) and per batch. The graph export is done (and cached) before timing.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"


def _p99(streams) -> float:
    return max(s.stats.stages["latency"].percentile(99) for s in streams.values())


def batched(backend: str, n: int, frames: int, dirs, max_batch: int | None = None) -> tuple[float, float]:
    from segengine.streams.pipeline import MultiPipeline
    from segengine.streams.stream import StreamOptions

    with MultiPipeline(backend=backend, max_batch=max_batch or n, dirs=dirs, render=False) as p:
        for i in range(n):
            p.add_source(str(VIDEO), stream_id=f"s{i}", options=StreamOptions(max_frames=frames))
        first = None
        count = 0
        for _ in p:
            count += 1
            first = first or time.monotonic()
        wall = time.monotonic() - first
    return (count - 1) / wall, _p99(p.streams)


def sequential(backend: str, n: int, frames: int, dirs) -> tuple[float, float]:
    from segengine.pipeline import Pipeline

    total, p99 = 0.0, 0.0
    for _ in range(n):
        with Pipeline(str(VIDEO), backend=backend, render=False, max_frames=frames, dirs=dirs) as p:
            first = None
            for _ in p:
                first = first or time.monotonic()
            total += time.monotonic() - first
        p99 = max(p99, p.stats.stages["latency"].percentile(99))
    return n * (frames - 1) / total, p99


def processes(backend: str, n: int, frames: int, env: dict[str, str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "segengine.cli", "run", str(VIDEO), "--backend", backend,
               "--max-frames", str(frames), "--json", "{out}"]
        procs = [subprocess.Popen([c.replace("{out}", f"{tmp}/{i}.jsonl") for c in cmd], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(n)]
        outs = [p.communicate()[1] for p in procs]
    steady, p99 = [], 0.0
    for text in outs:
        then = re.search(r"then ([\d.]+) s", text)
        latency = re.search(r"^latency\s+[\d.]+\s+([\d.]+)", text, re.M)
        if then is None or latency is None:
            raise RuntimeError(f"segengine run failed:\n{text[-2000:]}")
        steady.append(float(then.group(1)))
        p99 = max(p99, float(latency.group(1)) / 1e3)
    return n * (frames - 1) / max(steady), p99


def live(backend: str, n: int, fps: float, seconds: float, dirs, with_file: bool = False) -> dict[str, float]:
    from segengine.streams.pipeline import MultiPipeline
    from segengine.streams.stream import StreamOptions

    h, w = 540, 960
    cam = f"synthetic://?width={w}&height={h}&live=1&fps={fps:g}&frames={int(seconds * fps)}"
    with MultiPipeline(backend=backend, max_batch=max(n, 1) + with_file, dirs=dirs, render=False) as p:
        for i in range(n):
            p.add_source(f"{cam}&seed={i}", stream_id=f"cam{i}")
        if with_file:
            p.add_source(str(VIDEO), stream_id="file", options=StreamOptions(policy="lossless"))
        for _ in p:
            if all(p.streams[f"cam{i}"].done.is_set() for i in range(n)):
                break
        cams = {k: v for k, v in p.streams.items() if k.startswith("cam")}
        infer = max(s.stats.stages["infer"].percentile(50) for s in cams.values())
        dropped = sum(s.status.dropped for s in cams.values())
        frames = sum(s.stats.frames for s in cams.values())
    return {"p99": _p99(cams), "batch_time": infer, "dropped": dropped, "frames": frames}


def per_frame(backend: str, dirs) -> float:
    """The engine's own time for one frame alone through the graph (median of 20)."""
    import av
    import numpy as np

    from segengine.backends.base import BackendOptions
    from segengine.backends.registry import choose, open_backend, prepare_for
    from segengine.graph.prepare import GraphTarget

    with av.open(str(VIDEO)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24")
    choice = choose(backend, models=GraphTarget().models())
    b = open_backend(choice, prepare_for(choice, GraphTarget(), image.shape[:2], dirs), BackendOptions(dirs=dirs,
                                                                                                    streams=1))
    times = []
    for _ in range(22):
        t = time.perf_counter()
        b.infer(image)
        times.append(time.perf_counter() - t)
    b.close()
    return float(np.median(times[2:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--backend", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--frames", type=int, default=60, help="frames of each file stream")
    ap.add_argument("--live-fps", type=float, default=10.0)
    ap.add_argument("--live-seconds", type=float, default=15.0)
    ap.add_argument("--no-processes", action="store_true", help="leave out one process per stream")
    ap.add_argument("--live-only", action="store_true", help="only the live-camera table")
    args = ap.parse_args()

    import os

    import onnxruntime
    import openvino

    from segengine.models.zoo import WeightDirs

    dirs = WeightDirs.from_env()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"onnxruntime {onnxruntime.__version__}, openvino {openvino.get_version()}; video {VIDEO.name}, "
          f"{args.frames} frames a stream\n")
    for backend in args.backend:
        for n in sorted(set(args.streams) | {1}):  # graphs exported and cached before timing
            batched(backend, 1, 3, dirs, max_batch=n)
        t1 = per_frame(backend, dirs)
        print(f"## {backend}: one frame alone through the graph {t1 * 1e3:.0f} ms\n")
        print("| streams | batched fps | p99 ms | sequential fps | p99 ms | processes fps | p99 ms "
              "| batched/sequential |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in [] if args.live_only else args.streams:
            bf, bl = batched(backend, n, args.frames, dirs)
            sf, sl = sequential(backend, n, args.frames, dirs)
            pf, pl = (float("nan"), float("nan")) if args.no_processes else processes(backend, n, args.frames, env)
            print(f"| {n} | {bf:.1f} | {bl * 1e3:.0f} | {sf:.1f} | {sl * 1e3:.0f} | {pf:.1f} | {pl * 1e3:.0f} | "
                  f"{bf / sf:.2f} |", flush=True)
        print("\n| live cameras | beside a file | p99 ms | ms per batch | p99 / frame alone | p99 / batch | dropped |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for n, with_file in [(1, False), (2, False), (4, False), (1, True)]:
            r = live(backend, n, args.live_fps, args.live_seconds, dirs, with_file)
            print(f"| {n} | {'yes' if with_file else 'no'} | {r['p99'] * 1e3:.0f} | {r['batch_time'] * 1e3:.0f} | "
                  f"{r['p99'] / t1:.1f} | {r['p99'] / r['batch_time']:.1f} | "
                  f"{r['dropped']} of {r['dropped'] + r['frames']} |", flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
