"""Our tracker against ByteTrack on identical synthetic detections, scored by motmetrics/TrackEval.

    python benchmarks/tracking/run.py [--suite all|occlusion-heavy|crossing|easy|pan] [--seeds 5] [--frames 600]

For each scenario: one table (tracker × IDF1, MOTA, ID switches, MT/ML, HOTA, tracker fps),
each number the mean over the seeds; then the mask flicker of smoothing off vs on. Targets,
on the occlusion-heavy suite (means over seeds):
  - IDF1 of ``ours`` at least 5 points above ByteTrack's,
  - ID switches of ``ours`` at most half of ByteTrack's,
  - flicker with smoothing at most half of flicker without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from benchmarks.tracking import metrics  # noqa: E402
from benchmarks.tracking.baselines import VARIANTS, run_tracker  # noqa: E402
from benchmarks.tracking.synthetic import CELL, SCENARIOS, SUITES, SyntheticSequence, generate  # noqa: E402

TARGET_SUITE = "occlusion-heavy"
COLUMNS = [("IDF1", "idf1", "{:6.1%}"), ("MOTA", "mota", "{:6.1%}"), ("IDsw", "num_switches", "{:6.1f}"),
           ("MT", "mostly_tracked", "{:5.1f}"), ("ML", "mostly_lost", "{:5.1f}"), ("HOTA", "HOTA", "{:6.1%}"),
           ("FP", "num_false_positives", "{:6.1f}"), ("FN", "num_misses", "{:6.1f}"), ("fps", "fps", "{:7.0f}")]


def score_sequence(seq: SyntheticSequence, variants: list[str]) -> dict[str, dict[str, float]]:
    """Per variant: motmetrics' numbers, HOTA, tracker fps and (when it reports masks) flicker."""
    gt = [metrics.Boxes(f.gt.ids, f.gt.boxes) for f in seq.frames]
    gt_masks = [dict(zip(f.gt.ids.tolist(), f.gt.masks)) for f in seq.frames]
    dets, times = [f.detections for f in seq.frames], [f.t for f in seq.frames]
    out: dict[str, dict[str, float]] = {}
    for name in variants:
        run = run_tracker(name, dets, times, seq.fps, 1 / CELL)
        hyp = [metrics.Boxes(o.track_ids, o.boxes) for o in run.frames]
        acc = metrics.accumulate(gt, hyp)
        scores = metrics.mot_metrics(acc)
        scores.update(metrics.hota(gt, hyp) or {})
        scores["fps"] = run.fps
        matched = metrics.matches(acc, len(seq.frames))
        flick = metrics.flicker(run.frames, gt_masks, seq.stationary_ids, matched, [f.camera_x for f in seq.frames])
        if flick is not None:
            scores["flicker"] = flick
        accuracy = metrics.mask_accuracy(run.frames, gt_masks, matched, skip_ids=seq.stationary_ids)
        if accuracy is not None:
            scores["mask_iou_moving"] = accuracy
        out[name] = scores
    return out


def mean_over_seeds(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in per_seed[0]:
        keys = set().union(*(s[name].keys() for s in per_seed))
        out[name] = {k: float(np.mean([s[name][k] for s in per_seed if k in s[name]])) for k in keys}
        out[name]["idf1_std"] = float(np.std([s[name]["idf1"] for s in per_seed]))
    return out


def print_table(scenario: str, means: dict[str, dict[str, float]], seeds: int) -> None:
    print(f"\n== {scenario} (mean over {seeds} seeds) ==")
    print(f"{'tracker':<11}" + "".join(f"{title:>8}" for title, _, _ in COLUMNS))
    for name, row in means.items():
        cells = [fmt.format(row[key]) if key in row else "n/a" for _, key, fmt in COLUMNS]
        print(f"{name:<11}" + "".join(f"{c:>8}" for c in cells))
    raw, ours = means.get("ours-raw", {}), means.get("ours", {})
    if "flicker" in raw and "flicker" in ours:
        off, on = raw["flicker"], ours["flicker"]
        still = "; only frames where the camera is still" if SCENARIOS[scenario].pan_amplitude else ""
        print(f"mask flicker (still objects, mean 1-IoU between frames{still}): smoothing off {off:.4f}, "
              f"on {on:.4f}" + (f" ({on / off:.0%} of off)" if off > 0 else ""))
    if "mask_iou_moving" in raw and "mask_iou_moving" in ours:
        print(f"mask IoU with the truth (moving objects): smoothing off {raw['mask_iou_moving']:.3f}, "
              f"on {ours['mask_iou_moving']:.3f}")


def check_targets(means: dict[str, dict[str, float]]) -> bool:
    ours, byte = means["ours"], means["bytetrack"]
    checks = [(f"IDF1 ours {ours['idf1']:.1%} >= ByteTrack {byte['idf1']:.1%} + 5 points",
               ours["idf1"] >= byte["idf1"] + 0.05),
              (f"ID switches ours {ours['num_switches']:.1f} <= half of ByteTrack {byte['num_switches']:.1f}",
               ours["num_switches"] <= 0.5 * byte["num_switches"])]
    if "flicker" in ours and "flicker" in means.get("ours-raw", {}):
        off, on = means["ours-raw"]["flicker"], ours["flicker"]
        checks.append((f"flicker smoothing on {on:.4f} <= half of off {off:.4f}", on <= 0.5 * off))
    else:
        checks.append(("flicker: not measured (no reported masks)", False))
    print(f"\n== targets ({TARGET_SUITE}) ==")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", choices=list(SUITES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="also write every per-seed number here")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    from segengine.tracking.mask_tracker import TrackerConfig

    print(f"ours = MaskTracker({TrackerConfig()})")
    print(f"{args.seeds} seeds x {args.frames} frames; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    everything: dict[str, list[dict[str, dict[str, float]]]] = {}
    passed = True
    for scenario in SUITES[args.suite]:
        per_seed = [score_sequence(generate(scenario, seed, args.frames), variants) for seed in range(args.seeds)]
        everything[scenario] = per_seed
        means = mean_over_seeds(per_seed)
        print_table(scenario, means, args.seeds)
        if scenario == TARGET_SUITE and {"ours", "bytetrack"} <= set(variants):
            passed = check_targets(means)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
