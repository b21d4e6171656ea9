"""Scores from maintained libraries: py-motmetrics (CLEAR MOT, IDF1) and TrackEval (HOTA).

We only compute what they ask us for: per frame, the distance between every ground-truth
box and every reported box (1 − IoU, NaN where IoU < 0.5, so such a pair can never match),
or, for HOTA, the IoU itself. Matching, ID switches, IDF1's global assignment, MT/ML and HOTA
are the libraries' own code. (motmetrics 1.4's distance helpers call ``np.asfarray``, gone in
numpy 2, hence our own matrix; its accumulator and metrics are numpy-2 clean.)

Mask flicker is ours (no library has it): for ground-truth objects that stand still and are
not occluded between two frames (their true mask is identical in both), the mean 1 − IoU of
the masks the tracker reports for them in those two frames, where the same track covers the
object in both (which track covers which object is motmetrics' own matching). Pure detector
noise shows up here in full; temporal smoothing should shrink it. Its counterweight is
``mask_accuracy``: the mean IoU of reported masks with the true (visible) masks, for moving
objects, where smoothing that lags behind the object costs accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segengine.tracking.base import TrackedObjects
from segengine.tracking.iou import box_iou

MIN_IOU = 0.5  # the MOTChallenge / CLEAR MOT match threshold on boxes

# motmetrics' standard names; the table shows a subset.
MOT_METRICS = ["idf1", "idp", "idr", "mota", "motp", "num_switches", "num_fragmentations", "mostly_tracked",
               "partially_tracked", "mostly_lost", "num_unique_objects", "num_false_positives", "num_misses",
               "precision", "recall"]


@dataclass(frozen=True, eq=False)
class Boxes:
    """One frame's ids and boxes, ground truth or a tracker's."""

    ids: np.ndarray  # K int
    boxes: np.ndarray  # K×4 xyxy


def iou_matrix(gt: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    if len(gt) == 0 or len(hyp) == 0:
        return np.zeros((len(gt), len(hyp)))
    return box_iou(np.asarray(gt, np.float64), np.asarray(hyp, np.float64))


def distances(gt: np.ndarray, hyp: np.ndarray, min_iou: float = MIN_IOU) -> np.ndarray:
    """motmetrics' distance matrix: 1 − IoU, NaN (never match) where IoU < ``min_iou``."""
    iou = iou_matrix(gt, hyp)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


def accumulate(gt: Sequence[Boxes], hyp: Sequence[Boxes]):  # -> mm.MOTAccumulator
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for g, h in zip(gt, hyp, strict=True):
        acc.update(g.ids.tolist(), h.ids.tolist(), distances(g.boxes, h.boxes))
    return acc


def mot_metrics(acc) -> dict[str, float]:
    import motmetrics as mm

    summary = mm.metrics.create().compute(acc, metrics=MOT_METRICS, name="seq")
    return {name: float(summary[name].iloc[0]) for name in MOT_METRICS}


def hota(gt: Sequence[Boxes], hyp: Sequence[Boxes]) -> dict[str, float] | None:
    """TrackEval's HOTA, DetA, AssA (means over its IoU thresholds); None without trackeval."""
    try:
        from trackeval.metrics import HOTA
    except ImportError:
        return None
    gt_index = {i: k for k, i in enumerate(sorted({int(i) for g in gt for i in g.ids}))}
    hyp_index = {i: k for k, i in enumerate(sorted({int(i) for h in hyp for i in h.ids}))}
    data = {
        "num_timesteps": len(gt),
        "gt_ids": [np.array([gt_index[int(i)] for i in g.ids], int) for g in gt],
        "tracker_ids": [np.array([hyp_index[int(i)] for i in h.ids], int) for h in hyp],
        "similarity_scores": [iou_matrix(g.boxes, h.boxes) for g, h in zip(gt, hyp, strict=True)],
        "num_gt_dets": sum(len(g.ids) for g in gt), "num_tracker_dets": sum(len(h.ids) for h in hyp),
        "num_gt_ids": len(gt_index), "num_tracker_ids": len(hyp_index),
    }
    res = HOTA().eval_sequence(data)
    return {key: float(np.mean(res[key])) for key in ("HOTA", "DetA", "AssA")}


def matches(acc, frames: int) -> list[dict[int, int]]:
    """Per frame: ground-truth id → the tracker id motmetrics matched to it (MATCH or SWITCH)."""
    out: list[dict[int, int]] = [{} for _ in range(frames)]
    events = acc.mot_events
    hit = events[events["Type"].isin(["MATCH", "SWITCH"])]
    for (frame, _), row in hit.iterrows():
        out[int(frame)][int(row["OId"])] = int(row["HId"])
    return out


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def flicker(frames: Sequence[TrackedObjects], gt_masks: Sequence[dict[int, np.ndarray]],
            still_ids: frozenset[int], matched: list[dict[int, int]], camera_x: Sequence[float]) -> float | None:
    """Mean 1 − IoU of consecutive reported masks of still, unoccluded objects (module doc); None if none."""
    values = []
    for k in range(1, len(frames)):
        if abs(camera_x[k] - camera_x[k - 1]) > 0.5:  # the camera moved: every mask moved too
            continue
        for oid in still_ids:
            hid, prev_hid = matched[k].get(oid), matched[k - 1].get(oid)
            if hid is None or hid != prev_hid:
                continue
            if not np.array_equal(gt_masks[k].get(oid), gt_masks[k - 1].get(oid)):  # occlusion changed it
                continue
            a, b = _reported_mask(frames[k], hid), _reported_mask(frames[k - 1], hid)
            if a is not None and b is not None:
                values.append(1.0 - _mask_iou(a, b))
    return float(np.mean(values)) if values else None


def _reported_mask(frame: TrackedObjects, track_id: int) -> np.ndarray | None:
    if frame.masks is None:
        return None
    rows = np.flatnonzero(frame.track_ids == track_id)
    return frame.masks[rows[0]] >= 128 if len(rows) else None  # uint8 probabilities ×255


def mask_accuracy(frames: Sequence[TrackedObjects], gt_masks: Sequence[dict[int, np.ndarray]],
                  matched: list[dict[int, int]], skip_ids: frozenset[int] = frozenset()) -> float | None:
    """Mean IoU of each matched object's reported mask with its true mask (objects in ``skip_ids`` left out)."""
    values = []
    for frame, truth, pairs in zip(frames, gt_masks, matched, strict=True):
        for oid, hid in pairs.items():
            mask = None if oid in skip_ids else _reported_mask(frame, hid)
            if mask is not None:
                values.append(_mask_iou(mask, truth[oid]))
    return float(np.mean(values)) if values else None
