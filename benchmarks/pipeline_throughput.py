"""Bare graph throughput per backend and precision vs `segengine run` end to end, on the same video, in one run.

    python benchmarks/pipeline_throughput.py [VIDEO] [--preset road] [--repeat 1] [--frames N]

Bare: every frame decoded into memory first, then the graph alone: ONNX Runtime (fp32, with
denormals kept as before and flushed as now, its threads spinning and sleeping; the pipeline
uses sleeping), and OpenVINO in fp32 and, where the CPU computes it natively, bf16, each in its
latency mode (1 stream, what a live feed gets) and its throughput mode (a stream per core's
worth, frames kept in flight as the pipeline keeps them; what a file gets). End to end:
the CLI's pipeline (decode, inference, tracking, lanes, rendering, H.264 MP4 and JSONL sinks) on
the same frames, per backend. All use the cached
graph, so building it is not timed. Ratios are against ONNX Runtime's bare fp32 graph with
denormals kept, in the same run; each end-to-end run is also compared with its own backend's bare
graph.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import onnxruntime as ort

from segengine.backends.base import BackendOptions
from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.backends.probe import cpu_isa, has_bf16
from segengine.graph.cache import cached_graph
from segengine.graph.spec import GraphSpec
from segengine.models.zoo import WeightDirs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.inflight, when run as a script
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"

from benchmarks.inflight import run_all  # noqa: E402


def bare(make: Callable[[], object], frames: list) -> float:
    """Frames a second of the graph alone; a backend with frames in flight (OpenVINO's streams) is
    kept as full as the pipeline keeps it (``depth`` submitted before the oldest is collected)."""
    backend = make()
    backend.infer(frames[0])  # warm-up: allocations, thread pool
    start = time.perf_counter()
    run_all(backend, frames)
    backend.close()
    return len(frames) / (time.perf_counter() - start)


def end_to_end(video: Path, preset: str, backend: str, frames: int, limit: int | None) -> tuple[float, float]:
    """(the pipeline's own throughput from its summary, frames / wall time of the whole command)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "segengine.cli", "run", str(video), "-o", f"{tmp}/out.mp4",
               "--json", f"{tmp}/out.jsonl", "--preset", preset, "--backend", backend]
        cmd += ["--max-frames", str(limit)] if limit else []
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
    parser.add_argument("--repeat", type=int, default=1, help="repeat the whole set this many times")
    parser.add_argument("--frames", type=int, help="use only the first N frames")
    args = parser.parse_args()
    with av.open(str(args.video)) as container:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(args.frames or 10**9), container.decode(video=0))]
    size = frames[0].shape[:2]
    dirs = WeightDirs.from_env()
    graph = cached_graph(args.preset, size, dirs=dirs)
    spec = GraphSpec.read_file(graph)
    has_ov = importlib.util.find_spec("openvino") is not None
    print(f"{args.video.name}: {len(frames)} frames {size[1]}x{size[0]}, preset {args.preset}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ISA {', '.join(cpu_isa())}; "
          f"onnxruntime {ort.__version__}" + (f", openvino {_ov_version()}" if has_ov else ", no openvino")
          + f", python {platform.python_version()}")
    for i in range(args.repeat):
        plain = bare(lambda: OnnxRuntimeBackend(graph, spec, denormals_as_zero=False), frames)
        bares = {"onnxruntime fp32, denormals kept": plain,
                 "onnxruntime fp32 spinning": bare(lambda: OnnxRuntimeBackend(graph, spec, spinning=True), frames),
                 "onnxruntime fp32": bare(lambda: OnnxRuntimeBackend(graph, spec), frames)}
        if has_ov:
            from segengine.backends.openvino import OpenVinoBackend

            for precision in ("fp32", "bf16") if has_bf16(cpu_isa()) else ("fp32",):
                for streams, label in ((1, "1 stream"), (0, "streams")):  # latency mode (live feeds), files
                    options = BackendOptions(precision=precision, dirs=dirs, streams=streams)
                    bares[f"openvino {precision} {label}"] = bare(
                        lambda o=options: OpenVinoBackend(graph, spec, o), frames)
        reference = plain  # what the engine ran before flushing denormals: the baseline
        print(f"run {i + 1}, bare graph: " + " | ".join(f"{k} {v:.2f} fps ({v / reference:.2f}x)"
                                                      for k, v in bares.items()))
        for backend in ("onnxruntime", "openvino") if has_ov else ("onnxruntime",):
            e, wall = end_to_end(args.video, args.preset, backend, len(frames), args.frames)
            # The same backend as the run: ORT flushing denormals; OpenVINO as auto runs a file.
            own = bares["onnxruntime fp32"] if backend == "onnxruntime" else max(
                v for k, v in bares.items() if "openvino" in k and k.endswith(" streams"))
            print(f"run {i + 1}, segengine run --backend {backend}: {e:.2f} fps ({e / reference:.2f}x the baseline, "
                  f"{(own / e - 1) * 100:.1f} % under its own bare graph) | whole command incl. start-up "
                  f"{wall:.2f} fps")


def _ov_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


if __name__ == "__main__":
    main()
