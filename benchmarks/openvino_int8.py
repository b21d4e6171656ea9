"""OpenVINO fp32 / bf16 / INT8 on the same video and CamVid frames: bare graph speed and IoU, per INT8 recipe.

    python benchmarks/openvino_int8.py [VIDEO] [--preset road] [--calib VIDEO] [--calib-frames 64]
                                       [--recipes networks,heads,...] [--rounds 6] [--round-frames 20]

For each recipe (what stays in float, ``segengine.backends.openvino_int8.RECIPES``) the preset's
graph is quantised twice through ``segengine build --backend openvino --int8``'s own code: at the
video's frame size (timed on the video's frames, decoded into memory first) and at CamVid's
480x360 (scored by ``segengine eval``'s code on shared/data/camvid12). Each recipe gets a cache
of its own (the graphs are shared), so the backend finds exactly that recipe's model. Speed is
measured in rounds that alternate every model, ``--round-frames`` frames each, and reported as
the median (and best) round: on a shared machine a burst of someone else's work then costs one
round of one model, not the whole comparison.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from segengine.backends.base import BackendOptions
from segengine.backends.openvino import OpenVinoBackend
from segengine.backends.openvino_int8 import RECIPES
from segengine.build import BuildRequest
from segengine.build_openvino import build_openvino_int8
from segengine.evaluate import evaluate
from segengine.graph.cache import cached_graph
from segengine.graph.spec import GraphSpec
from segengine.models.zoo import WeightDirs

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_VIDEO = SHARED / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"
CAMVID = SHARED / "data" / "camvid12"


def ious(preset: str, dirs: WeightDirs, precision: str) -> dict[str, float]:
    report = evaluate(preset, CAMVID / "images", CAMVID / "annot", dirs=dirs, progress=False, backend="openvino",
                      precision=precision)
    return {f"{s.model}/{s.label}": s.iou for s in report.scores}


def recipe_dirs(root: Path, base: WeightDirs, recipe: str) -> WeightDirs:
    """A cache of the recipe's own whose graphs are the shared ones (no second export)."""
    folder = root / recipe
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graphs").symlink_to(base.cache.parent / "graphs", target_is_directory=True)
    return WeightDirs(cache=folder / "models", mirror=base.mirror or base.cache)


def speeds(backends: dict[str, OpenVinoBackend], frames: list[np.ndarray], rounds: int,
           per_round: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in backends}
    for backend in backends.values():
        backend.infer(frames[0])  # warm-up: allocations, thread pool
    for r in range(rounds):
        chunk = [frames[(r * per_round + i) % len(frames)] for i in range(per_round)]
        for name, backend in backends.items():
            start = time.perf_counter()
            for frame in chunk:
                backend.infer(frame)
            out[name].append(per_round / (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT_VIDEO)
    parser.add_argument("--preset", default="road")
    parser.add_argument("--calib", type=Path, default=DEFAULT_VIDEO, help="calibration frames' source")
    parser.add_argument("--calib-frames", type=int, default=64)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-frames", type=int, default=20)
    args = parser.parse_args()
    with av.open(str(args.video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    base = WeightDirs.from_env()
    size = frames[0].shape[:2]
    graph = cached_graph(args.preset, size, dirs=base)
    cached_graph(args.preset, (360, 480), dirs=base)
    spec = GraphSpec.read_file(graph)
    print(f"OpenVINO {importlib.metadata.version('openvino')}, NNCF {importlib.metadata.version('nncf')}; "
          f"{args.preset} at {size[1]}x{size[0]}; calibration: {args.calib_frames} frames of {args.calib.name}; "
          f"{args.rounds} rounds of {args.round_frames} frames per model", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"fp32": (base, "fp32"), "bf16": (base, "bf16")}
        for recipe in args.recipes.split(","):
            dirs = recipe_dirs(Path(tmp), base, recipe)
            for frame_size in (size, (360, 480)):
                build_openvino_int8(BuildRequest(args.preset, frame_size=frame_size, precision="int8",
                                                 calib=str(args.calib), calib_frames=args.calib_frames), dirs,
                                    recipe=recipe)
            runs[f"int8 {recipe}"] = (dirs, "int8")
        backends = {name: OpenVinoBackend(graph, spec, BackendOptions(precision=p, dirs=d))
                    for name, (d, p) in runs.items()}
        fps = speeds(backends, frames, args.rounds, args.round_frames)
        for backend in backends.values():
            backend.close()
        scores = {name: ious(args.preset, d, p) for name, (d, p) in runs.items()}
    classes = list(scores["fp32"])
    print("\n| precision | fps, median | fps, best | " + " | ".join(classes) + " | worst loss vs fp32 (points) |")
    print("|---" * (len(classes) + 4) + "|")
    for name in runs:
        worst = max(100 * (scores["fp32"][c] - scores[name][c]) for c in classes)
        print(f"| {name} | {statistics.median(fps[name]):.2f} | {max(fps[name]):.2f} | "
              + " | ".join(f"{scores[name][c]:.4f}" for c in classes) + f" | {worst:+.2f} |")


if __name__ == "__main__":
    main()
