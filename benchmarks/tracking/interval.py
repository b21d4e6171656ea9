"""The cost of ``--interval N``: detections on every Nth frame only, the frames between carried.

    python benchmarks/tracking/interval.py [--suite all|occlusion-heavy|...] [--intervals 1,2,3] [--seeds 5]

Our MaskTracker (default ``TrackerConfig``, with masks) gets the synthetic scenes' detections on
frames 0, N, 2N, ... only, as the engine's networks would give them; on the frames between it
reports ``MaskTracker.predict(t)``: the last tracks moved by the filter's velocity ("carry", what
the engine does), or, for reference, the last answer unchanged ("hold", what a frozen overlay
would show). Every frame is scored against its ground truth, the carried ones too: IDF1, MOTA,
HOTA (motmetrics, TrackEval) and the mean IoU of reported masks with the true visible masks
(all matched objects, and moving ones only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from benchmarks.tracking import metrics  # noqa: E402
from benchmarks.tracking.synthetic import CELL, SUITES, SyntheticSequence, generate  # noqa: E402
from segengine.tracking.association import BoxGrid  # noqa: E402
from segengine.tracking.base import TrackedObjects  # noqa: E402
from segengine.tracking.mask_tracker import MaskTracker, TrackerConfig  # noqa: E402

MODES = ("carry", "hold")
COLUMNS = [("IDF1", "idf1", "{:6.1%}"), ("MOTA", "mota", "{:6.1%}"), ("IDsw", "num_switches", "{:6.1f}"),
           ("HOTA", "HOTA", "{:6.1%}"), ("FP", "num_false_positives", "{:6.1f}"), ("FN", "num_misses", "{:6.1f}"),
           ("maskIoU", "mask_iou", "{:7.3f}"), ("moving", "mask_iou_moving", "{:7.3f}")]


def track_every_nth(seq: SyntheticSequence, n: int, mode: str) -> list[TrackedObjects]:
    """One fresh tracker over ``seq``, detections on every ``n``th frame, the rest carried by ``mode``."""
    tracker = MaskTracker(TrackerConfig(), grid=BoxGrid(sx=1 / CELL, sy=1 / CELL))
    out: list[TrackedObjects] = []
    for k, frame in enumerate(seq.frames):
        if k % n == 0:
            out.append(tracker.step(frame.detections, frame.t))
        else:
            out.append(tracker.predict(frame.t) if mode == "carry" else out[-1])
    return out


def score(seq: SyntheticSequence, frames: list[TrackedObjects]) -> dict[str, float]:
    gt = [metrics.Boxes(f.gt.ids, f.gt.boxes) for f in seq.frames]
    gt_masks = [dict(zip(f.gt.ids.tolist(), f.gt.masks)) for f in seq.frames]
    hyp = [metrics.Boxes(o.track_ids, o.boxes) for o in frames]
    acc = metrics.accumulate(gt, hyp)
    out = metrics.mot_metrics(acc)
    out.update(metrics.hota(gt, hyp) or {})
    matched = metrics.matches(acc, len(seq.frames))
    for key, skip in (("mask_iou", frozenset()), ("mask_iou_moving", seq.stationary_ids)):
        value = metrics.mask_accuracy(frames, gt_masks, matched, skip_ids=skip)
        if value is not None:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", choices=list(SUITES))
    parser.add_argument("--intervals", default="1,2,3", help="comma-separated N (default 1,2,3)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=600)
    args = parser.parse_args(argv)
    intervals = [int(v) for v in args.intervals.split(",") if v]
    if not intervals or min(intervals) < 1:
        parser.error("--intervals: whole numbers >= 1, e.g. 1,2,3")
    print(f"ours = MaskTracker({TrackerConfig()})")
    print(f"{args.seeds} seeds x {args.frames} frames; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    for scenario in SUITES[args.suite]:
        seqs = [generate(scenario, seed, args.frames) for seed in range(args.seeds)]
        print(f"\n== {scenario} (mean over {args.seeds} seeds; every frame scored) ==")
        print(f"{'N':>2} {'between':<8}" + "".join(f"{title:>8}" for title, _, _ in COLUMNS))
        for n in intervals:
            for mode in MODES if n > 1 else MODES[:1]:
                runs = [score(seq, track_every_nth(seq, n, mode)) for seq in seqs]
                row = {key: float(np.mean([r[key] for r in runs if key in r])) for _, key, _ in COLUMNS}
                cells = [fmt.format(row[key]) for _, key, fmt in COLUMNS]
                print(f"{n:>2} {mode if n > 1 else '-':<8}" + "".join(f"{c:>8}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
