"""Bare graph throughput vs `segengine run` end to end, on the same video, in one run.

    python benchmarks/pipeline_throughput.py [VIDEO] [--preset road] [--repeat 1]

Bare: every frame decoded into memory first, then the graph alone (ONNX Runtime, CPU),
with its thread pool spinning and sleeping; the faster one counts.
End to end: the CLI's pipeline (decode, inference, tracking, lanes, rendering, H.264 MP4
and JSONL sinks) on the same frames. Both use the cached graph, so building it is not
timed. The overhead is how much slower end to end is than the bare graph.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import onnxruntime as ort

from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.graph.cache import cached_graph
from segengine.graph.spec import GraphSpec
from segengine.models.zoo import WeightDirs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"


def bare(graph: Path, frames: list, spinning: bool) -> float:
    backend = OnnxRuntimeBackend(graph, GraphSpec.read_file(graph), spinning=spinning)
    backend.infer(frames[0])  # warm-up: allocations, thread pool
    start = time.perf_counter()
    for frame in frames:
        backend.infer(frame)
    return len(frames) / (time.perf_counter() - start)


def end_to_end(video: Path, preset: str, frames: int) -> tuple[float, float]:
    """(the pipeline's own throughput from its summary, frames / wall time of the whole command)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "segengine.cli", "run", str(video), "-o", f"{tmp}/out.mp4",
               "--json", f"{tmp}/out.jsonl", "--preset", preset, "--backend", "onnxruntime"]
        start = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        with av.open(f"{tmp}/out.mp4") as container:
            assert container.streams.video[0].frames == frames, "end to end lost frames"
    summary = re.search(r"throughput ([0-9.]+) fps", done.stderr)
    assert summary, done.stderr
    return float(summary.group(1)), frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--preset", default="road")
    parser.add_argument("--repeat", type=int, default=1, help="alternate bare and end-to-end runs this many times")
    args = parser.parse_args()
    with av.open(str(args.video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    size = frames[0].shape[:2]
    graph = cached_graph(args.preset, size, dirs=WeightDirs.from_env())
    print(f"{args.video.name}: {len(frames)} frames {size[1]}x{size[0]}, preset {args.preset}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"onnxruntime {ort.__version__}, python {platform.python_version()}")
    for i in range(args.repeat):
        # The graph alone, with ONNX Runtime's threads spinning (its default, fastest alone) and
        # sleeping (what the pipeline uses); the overhead is against the faster of the two.
        spin, sleep = bare(graph, frames, spinning=True), bare(graph, frames, spinning=False)
        b = max(spin, sleep)
        e, wall = end_to_end(args.video, args.preset, len(frames))
        print(f"run {i + 1}: bare graph {spin:.2f} fps spinning, {sleep:.2f} fps sleeping | segengine run {e:.2f} fps,"
              f" overhead {(b / e - 1) * 100:.1f} % | whole command incl. start-up {wall:.2f} fps, "
              f"overhead {(b / wall - 1) * 100:.1f} %")


if __name__ == "__main__":
    main()
