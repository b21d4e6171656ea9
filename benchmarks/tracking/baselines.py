"""The trackers under test, each behind one contract: ``step(dets, t) -> TrackedObjects``.

- ``ours``: ``segengine.tracking.mask_tracker.MaskTracker`` (default ``TrackerConfig``: mask
  smoothing 0.5) with masks; ``ours-boxes``: the same tracker given boxes only; ``ours-raw``:
  with masks, smoothing off (``smoothing=0``), the reference for the flicker metric.
- ``iou``: the engine's earlier ``IouTracker`` (engine/tracking/iou.py), wrapped to ``step()``;
  the harness was first built on it, and it stays as a floor.
- ``bytetrack``: roboflow ``trackers.ByteTrackTracker`` (the maintained home of supervision's
  former ``sv.ByteTrack``, removed from supervision 0.27+) with its documented defaults:
  ``lost_track_buffer=30`` (frames at 30 fps, i.e. 1 s), ``track_activation_threshold=0.7``,
  ``minimum_consecutive_frames=2``, ``minimum_iou_threshold=0.1``,
  ``high_conf_det_threshold=0.6``. ``frame_rate`` is set to the sequence's nominal fps and
  each frame's timestamp is passed, so the lost-track buffer and the Kalman step follow real
  time on uneven frame timing, as ours does. It sees boxes, scores and class ids (it ignores
  classes and masks); rows it has not confirmed yet (``tracker_id == -1``) are not reported,
  which is its own contract (ours reports confirmed tracks only, too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from segengine.geometry import Placement
from segengine.layers import Instances
from segengine.tracking.base import Detections, TrackedObjects
from segengine.tracking.iou import IouTracker


class StepTracker(Protocol):
    def step(self, dets: Detections, t: float) -> TrackedObjects: ...


def _masks_u8(dets: Detections) -> np.ndarray | None:
    return None if dets.masks is None else (dets.masks.astype(np.uint8) * 255 if dets.masks.dtype == bool
                                            else dets.masks)


def _rows(dets: Detections, ids: np.ndarray, rows: np.ndarray) -> TrackedObjects:
    masks = _masks_u8(dets)
    return TrackedObjects(track_ids=np.asarray(ids, np.int64), detection=np.asarray(rows, np.int64),
                          boxes=dets.boxes[rows], scores=dets.scores[rows], class_ids=dets.class_ids[rows],
                          masks=None if masks is None else masks[rows])


class IouStep:
    """The engine's earlier ``IouTracker`` (Instances in, Instances out) behind ``step()``."""

    def __init__(self) -> None:
        self.tracker = IouTracker()

    def step(self, dets: Detections, t: float) -> TrackedObjects:
        n = len(dets)
        h, w = dets.masks.shape[1:] if dets.masks is not None else (1, 1)
        inst = Instances(boxes=dets.boxes.astype(np.float32), scores=dets.scores.astype(np.float32),
                         class_ids=dets.class_ids.astype(np.int32), masks=np.zeros((n, h, w), np.uint8),
                         placement=Placement((h, w), (h, w), (h, w), 0, 0), class_names=("object",) * 91)
        ids = self.tracker.update(inst, t).track_ids
        return _rows(dets, ids, np.arange(n))


class ByteTrackStep:
    """``trackers.ByteTrackTracker`` on the same detections; defaults as documented (module doc)."""

    def __init__(self, fps: float) -> None:
        import supervision as sv
        from trackers import ByteTrackTracker

        self._sv = sv
        self.tracker = ByteTrackTracker(frame_rate=fps)

    def step(self, dets: Detections, t: float) -> TrackedObjects:
        n = len(dets)
        sv_dets = self._sv.Detections(xyxy=dets.boxes.astype(np.float32).reshape(n, 4),
                                      confidence=dets.scores.astype(np.float32),
                                      class_id=dets.class_ids.astype(int), data={"row": np.arange(n)})
        out = self.tracker.update(sv_dets, timestamp=t)
        ids = np.asarray(out.tracker_id if out.tracker_id is not None else [], np.int64)
        rows = np.asarray(out.data.get("row", []), np.int64)[ids >= 0] if len(ids) else np.zeros(0, np.int64)
        return _rows(dets, ids[ids >= 0], rows)


def _ours(smoothing: bool, mask_scale: float) -> StepTracker:
    from segengine.tracking.association import BoxGrid
    from segengine.tracking.mask_tracker import MaskTracker, TrackerConfig

    config = TrackerConfig() if smoothing else TrackerConfig(smoothing=0.0)
    # Boxes come in frame pixels, masks on a grid ``mask_scale`` times as fine: tell the tracker,
    # so it moves a track's mask with its box correctly.
    return MaskTracker(config, grid=BoxGrid(sx=mask_scale, sy=mask_scale))


@dataclass(frozen=True)
class Variant:
    make: Callable[[float, float], StepTracker]  # (fps, mask grid cells per box pixel) → a fresh tracker
    masks: bool  # whether the tracker sees the detections' masks


VARIANTS: dict[str, Variant] = {
    "ours": Variant(lambda fps, scale: _ours(True, scale), masks=True),
    "ours-boxes": Variant(lambda fps, scale: _ours(True, scale), masks=False),
    "ours-raw": Variant(lambda fps, scale: _ours(False, scale), masks=True),  # smoothing off: flicker reference
    "bytetrack": Variant(lambda fps, scale: ByteTrackStep(fps), masks=False),
    "iou": Variant(lambda fps, scale: IouStep(), masks=False),
}


@dataclass
class TrackRun:
    frames: list[TrackedObjects] = field(default_factory=list)
    seconds: float = 0.0  # time inside step() only

    @property
    def fps(self) -> float:
        return len(self.frames) / self.seconds if self.seconds > 0 else float("inf")


def run_tracker(variant: str, detections: list[Detections], times: list[float], fps: float,
                mask_scale: float) -> TrackRun:
    """One fresh tracker over a whole sequence; only ``step()`` is timed. ``mask_scale``: mask-grid
    cells per box pixel (0.25 for the synthetic scenes)."""
    spec = VARIANTS[variant]
    tracker = spec.make(fps, mask_scale)
    run = TrackRun()
    for dets, t in zip(detections, times):
        if not spec.masks and dets.masks is not None:
            dets = Detections(dets.boxes, dets.scores, dets.class_ids, None)
        start = time.perf_counter()
        out = tracker.step(dets, t)
        run.seconds += time.perf_counter() - start
        run.frames.append(out)
    return run
