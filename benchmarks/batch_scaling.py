"""Time per frame of a preset's graph by batch size on the CPU backends, against the static batch-1 graph.

    python benchmarks/batch_scaling.py [VIDEO] [--preset road] [--frame-size 960x540] [--max-batch 8] [--repeat 5]

Both graphs come from the graph cache (exported on first use, not timed). Each repetition runs the
same 2 × max-batch real frames in batches of B; the time per frame is the median repetition's over
its frame count. ONNX Runtime runs one batch at a time on every core; OpenVINO (fp32) runs in its
latency mode (one request on every core) and its throughput mode (a request per stream, as many
batches in flight as it has streams, as the pipeline keeps them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from segengine.backends.base import BackendOptions
from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.backends.openvino import OpenVinoBackend
from segengine.graph.cache import cached_graph
from segengine.graph.spec import GraphSpec
from segengine.models.zoo import WeightDirs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.inflight, when run as a script
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"

from benchmarks.inflight import run_all  # noqa: E402


def per_frame(backend: object, frames: np.ndarray, batch: int, repeat: int) -> float:
    """Median seconds per frame over ``repeat`` runs of ``frames`` in batches of ``batch``."""
    batches = [frames[i:i + batch] for i in range(0, len(frames), batch)]
    backend.infer(batches[0])  # warm-up: this batch size's allocations
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run_all(backend, batches)
        times.append((time.perf_counter() - start) / len(frames))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--preset", default="road")
    parser.add_argument("--frame-size", default="960x540", help="WxH")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    w, h = (int(v) for v in args.frame_size.split("x"))
    dirs = WeightDirs.from_env()
    with av.open(str(args.video)) as container:
        decoded = [f.to_ndarray(format="rgb24", width=w, height=h) for f in container.decode(video=0)]
    count = 2 * args.max_batch
    frames = np.stack(decoded[:: max(1, len(decoded) // count)][:count])
    graphs = {1: cached_graph(args.preset, (h, w), dirs=dirs),
              args.max_batch: cached_graph(args.preset, (h, w), dirs=dirs, max_batch=args.max_batch)}
    backends: dict[str, Callable[[Path, GraphSpec], object]] = {
        "onnxruntime": lambda p, s: OnnxRuntimeBackend(p, s),
        "openvino latency": lambda p, s: OpenVinoBackend(p, s, BackendOptions(precision="fp32", streams=1, dirs=dirs)),
        "openvino throughput": lambda p, s: OpenVinoBackend(p, s, BackendOptions(precision="fp32", dirs=dirs)),
    }
    sizes = [b for b in (1, 2, 4, 8, 16, 32) if b <= args.max_batch]
    print(f"{args.preset} {w}x{h}, {count} frames of {args.video.name}, ms per frame (median of {args.repeat})")
    print(f"{'':22}{'static b1':>10}" + "".join(f"{f'b{b}':>8}" for b in sizes))
    for name, make in backends.items():
        cells = []
        for top, path in graphs.items():
            backend = make(path, GraphSpec.read_file(path))
            try:
                cells += [per_frame(backend, frames, b, args.repeat) * 1e3 for b in ([1] if top == 1 else sizes)]
            finally:
                backend.close()
        print(f"{name:22}" + "".join(f"{c:>{10 if i == 0 else 8}.1f}" for i, c in enumerate(cells)))


if __name__ == "__main__":
    main()
