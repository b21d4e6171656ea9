"""A mask-aware multi-object tracker: ByteTrack's two-stage association, with mask IoU.

Per frame at time ``t`` (seconds):

1. every track's box is predicted to ``t`` by a constant-velocity Kalman filter stepped by
   the time since the previous frame (dropped frames, variable rates: a longer step);
2. confident detections ↔ confirmed and lost tracks, on mask IoU (the track's last mask
   moved to its predicted box) mixed with box IoU (the predicted box), never across
   classes; lost tracks take a looser gate;
3. low-confidence detections ↔ confirmed tracks still unmatched: they keep an occluded or
   blurred object's track alive but never start one;
4. confident detections nobody claimed ↔ lost tracks again, on *buffered* boxes (both grown
   by ``lost_buffer`` × their size, as in C-BIoU): an object going behind something shrinks
   to its visible part, so its prediction lags and it comes out where plain boxes no longer
   overlap. Only leftovers take part, so a lost track never takes a detection that a track
   in view claimed (crossings stay clean);
5. confident detections still left ↔ tentative tracks (born last frame);
6. unmatched tentative tracks are dropped, unmatched confirmed ones become lost, lost ones
   older than ``max_lost`` seconds are dropped, and confident detections still left above
   ``new_track_score`` start tentative tracks (confirmed at once on a run's first frame).

Only confirmed tracks are reported. Memory is bounded: a track is a row of a few small
arrays plus its last mask, and dropped tracks leave nothing behind.

Masks are smoothed by an exponential moving average of their probabilities, the previous
average first moved by the motion the filter predicts (so a moving object does not smear,
and box jitter does not shake a still one); see :meth:`MaskTracker._smooth`.

On frames without detections *by choice* (``--interval N``: the networks skipped that frame),
:meth:`MaskTracker.predict` reports the last frame's tracks moved by the motion the filter
predicts, masks moved with them, and changes nothing: the next ``step`` predicts over the
whole time since the last detections, as if the frames between had not been there (a frame
we did not look at is no evidence that a track was missed, so nothing ages).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

from segengine.errors import ConfigError
from segengine.layers.instances import Instances
from segengine.tracking.association import BoxGrid, assign, buffered_iou, mask_iou, move_mask, similarity
from segengine.tracking.base import Detections, TrackedObjects
from segengine.tracking.kalman import BoxKalman, cxcywh_to_xyxy, xyxy_to_cxcywh

TENTATIVE, CONFIRMED, LOST = 0, 1, 2  # a track's state; also the index into the gate tables
_NONE = np.zeros(0, np.int64)
_JITTER = 0.1  # box-edge error, as a share of the box's mean side, that smoothing treats as noise


@dataclass(frozen=True)
class TrackerConfig:
    high_score: float = 0.5  # confident detections: matched first, may start tracks
    low_score: float = 0.1  # below this a detection is ignored
    new_track_score: float = 0.7  # a confident detection starts a track only above this
    match_gate: float = 0.2  # least similarity for confident detection ↔ confirmed track
    lost_gate: float = 0.1  # the same for a lost track (its prediction has drifted), also on buffered boxes
    low_gate: float = 0.4  # least similarity for low-confidence detection ↔ confirmed track
    tentative_gate: float = 0.3  # least similarity for confident detection ↔ tentative track
    min_hits: int = 2  # detections before a track is confirmed (and reported)
    max_lost: float = 1.5  # seconds a lost track can still be recovered
    lost_buffer: float = 0.5  # recovery: boxes grown by this × their size on each side (0 = off)
    mask_weight: float = 0.5  # share of mask IoU in the similarity where both sides have masks
    smoothing: float = 0.7  # weight of the previous mask in its moving average; 0 = off

    def __post_init__(self) -> None:
        for name, value in ((f.name, getattr(self, f.name)) for f in fields(self)):
            ok = {"min_hits": isinstance(value, int) and value >= 1, "max_lost": value >= 0,
                  "smoothing": 0 <= value < 1}.get(name, 0 <= value <= 1)
            if not ok:
                raise ConfigError(f"TrackerConfig.{name}: {value!r} is out of range")
        if self.low_score > self.high_score:
            raise ConfigError(f"TrackerConfig: low_score {self.low_score} is above high_score {self.high_score}")


class MaskTracker:
    """``step(detections, t)`` → the confirmed tracks seen in this frame; ``update`` is the
    pipeline's :class:`~segengine.tracking.base.Tracker` adapter over :class:`Instances`.

    ``grid`` maps the detections' box coordinates onto their mask grid (used to move a
    track's mask with its box); the default identity means boxes are in mask-grid cells.
    ``update`` derives it from the instances' placement.
    """

    def __init__(self, config: TrackerConfig | None = None, *, grid: BoxGrid | None = None) -> None:
        self.config = config or TrackerConfig()
        self.grid = grid or BoxGrid()
        cfg, off = self.config, np.inf
        # Each stage's gate for a track in state (TENTATIVE, CONFIRMED, LOST); ∞ = not in the stage.
        self._gates = (np.array([off, cfg.match_gate, cfg.lost_gate]), np.array([off, cfg.low_gate, off]),
                       np.array([cfg.tentative_gate, off, off]))
        self.reset()

    def reset(self) -> None:
        self._next_id = 1
        self._t: float | None = None  # the previous frame's timestamp
        self._now = 0.0  # the tracker's own clock: sums max(dt, 0), so it never runs backwards
        self._kf = BoxKalman()
        self._ids = np.zeros(0, np.int64)
        self._classes = np.zeros(0, np.int64)
        self._state = np.zeros(0, np.int8)
        self._hits = np.zeros(0, np.int64)
        self._seen = np.zeros(0)  # clock time of each track's last detection
        self._mask_boxes = np.zeros((0, 4))  # grid box each stored mask belongs to
        self._masks: list[np.ndarray | None] = []  # last (smoothed) uint8 mask per track
        self._shown: TrackedObjects = _NOTHING  # what the last step reported, for predict()
        self._out: Instances | None = None  # what the last update returned, for carry()

    @property
    def num_tracks(self) -> int:
        """Tracks held (tentative, confirmed and lost): stays small whatever the run length."""
        return len(self._ids)

    # -- the pipeline's adapter ---------------------------------------------------------------

    def update(self, instances: Instances, t: float) -> Instances:
        """The confirmed tracks among ``instances``, with ``track_ids`` and (smoothed) masks."""
        grid = BoxGrid.from_placement(instances.placement, instances.masks.shape[1:])
        if grid != self.grid:  # a new geometry (first frame, or the frame size changed):
            self.grid = grid  # masks kept on the old grid mean nothing on the new one
            self._masks = [None] * len(self._masks)
        # The masks go in as uint8 probabilities (thresholded at 128 where it matters), so the
        # moving average keeps their soft edges.
        dets = Detections(instances.boxes, instances.scores, instances.class_ids, instances.masks)
        found = self.step(dets, t)
        kept = instances.select(found.detection)
        masks = found.masks if found.masks is not None else kept.masks
        self._out = replace(kept, track_ids=found.track_ids, masks=masks)
        return self._out

    def carry(self, t: float) -> Instances | None:
        """The last update's instances at time ``t``, moved by their predicted motion (see
        :meth:`predict`); None before the first update."""
        if self._out is None:
            return None
        moved = self.predict(t)
        masks = moved.masks if moved.masks is not None else self._out.masks
        return replace(self._out, boxes=moved.boxes.astype(np.float32), masks=masks)

    # -- the core ----------------------------------------------------------------------------

    def step(self, dets: Detections, t: float) -> TrackedObjects:
        """Track one frame's detections at time ``t`` (seconds): the confirmed tracks seen in it."""
        cfg = self.config
        first = self._t is None
        dt = 0.0 if self._t is None else max(t - self._t, 0.0)  # a repeated or earlier time: no step
        self._t = t
        self._now += dt
        m, n = len(self._ids), len(dets)
        if m:
            self._kf.predict(dt)
        if n == 0:
            if m:
                self._age(np.zeros(m, bool))
            self._shown = _empty(dets)
            return self._shown
        scores, boxes = dets.scores, np.asarray(dets.boxes, np.float64)  # one dtype for all the box maths
        if dets.masks is not None:
            if dets.masks.dtype not in (np.bool_, np.uint8):
                raise ConfigError(f"Detections.masks: expected bool or uint8 ×255, got {dets.masks.dtype}")
            self.grid.check(boxes, dets.masks.shape[1:])
        high = scores >= cfg.high_score
        match = np.full(n, -1, np.intp)  # detection → track row
        if m:
            self._associate(dets, boxes, high, match)
        hit = (match >= 0).nonzero()[0]
        rows = match[hit]
        self._correct(dets, boxes, hit, rows, dt)
        born = _NONE if len(hit) == n else ((match < 0) & (scores >= cfg.new_track_score) & high).nonzero()[0]
        if len(rows) < m:  # some tracks missed this frame
            matched = np.zeros(m, bool)
            matched[rows] = True
            keep = self._age(matched)
            if keep is not None:  # rows were dropped: renumber the matched ones
                rows = np.cumsum(keep)[rows] - 1
        det_idx, trk_idx = hit, rows
        if len(born):
            self._birth(dets, boxes, born, CONFIRMED if first or cfg.min_hits <= 1 else TENTATIVE)
            total = len(self._ids)
            det_idx = np.concatenate([hit, born])
            trk_idx = np.concatenate([rows, np.arange(total - len(born), total)])
            order = np.argsort(det_idx, kind="stable")
            det_idx, trk_idx = det_idx[order], trk_idx[order]
        shown = self._state[trk_idx] == CONFIRMED
        if not shown.all():
            det_idx, trk_idx = det_idx[shown], trk_idx[shown]
        masks = None
        if dets.masks is not None:
            masks = np.empty((len(det_idx), *dets.masks.shape[1:]), np.uint8)
            for k, r in enumerate(trk_idx):
                masks[k] = self._masks[r]
        self._shown = TrackedObjects(track_ids=self._ids[trk_idx], detection=det_idx, boxes=dets.boxes[det_idx],
                                     scores=scores[det_idx], class_ids=self._classes[trk_idx], masks=masks)
        return self._shown

    def predict(self, t: float) -> TrackedObjects:
        """The tracks the last ``step`` reported, at time ``t`` (seconds) without detections:
        each box and mask moved by the filter's velocity over ``t`` − the last step's time (scale
        included), the same motion ``_smooth`` moves a mask by. Read-only: the tracker's state
        is left as it was, so skipping frames this way never changes the tracking itself."""
        shown = self._shown
        if self._t is None or not len(shown):
            return shown
        dt = max(t - self._t, 0.0)
        rows = np.searchsorted(self._ids, shown.track_ids)  # ids are born in increasing order
        motion = self._kf.velocity[rows] * dt
        boxes = cxcywh_to_xyxy(xyxy_to_cxcywh(shown.boxes) + motion)
        masks = None
        if shown.masks is not None:
            g = self.grid
            src = self._mask_boxes[rows]
            dst = cxcywh_to_xyxy(xyxy_to_cxcywh(src) + motion * (g.sx, g.sy, g.sx, g.sy))
            masks = np.empty_like(shown.masks)
            for k, r in enumerate(rows):
                mask = self._masks[r]
                masks[k] = shown.masks[k] if mask is None else move_mask(mask, src[k], dst[k])
        return replace(shown, boxes=boxes.astype(shown.boxes.dtype), masks=masks)

    # -- steps ---------------------------------------------------------------------------------

    def _associate(self, dets: Detections, boxes: np.ndarray, high: np.ndarray, match: np.ndarray) -> None:
        """The matching stages (2–5 of the module doc); fills ``match`` (detection → track row).

        Each stage is one assignment over all tracks with a gate per track taken from its
        state (an infinite gate leaves a track out), so no stage slices the tracks.
        """
        cfg, state = self.config, self._state
        pred = self._kf.boxes()
        sim = self._similarity(dets, boxes, pred)
        confident = high.nonzero()[0]
        # 2. confident detections ↔ confirmed and lost tracks (the lost with a looser gate)
        left = len(confident) - _match(sim, confident, self._gates[0][state], match)
        # 3. low-confidence detections ↔ confirmed tracks not matched yet
        if len(confident) < len(match):
            low = ((dets.scores >= cfg.low_score) & ~high).nonzero()[0]
            gate = self._gates[1][state]
            gate[match[match >= 0]] = np.inf
            _match(sim, low, gate, match)
        # 4. confident detections nobody claimed ↔ lost tracks, on buffered boxes; before the
        #    tentative tracks, so a recovery missed by a frame can still happen the next one.
        lost = state == LOST
        if left and cfg.lost_buffer > 0 and lost.any():
            rest = confident[match[confident] < 0]
            free = lost.copy()
            free[match[match >= 0]] = False
            cols = free.nonzero()[0]
            if len(cols):
                wide = buffered_iou(boxes[rest], pred[cols], dets.class_ids[rest], self._classes[cols], cfg.lost_buffer)
                r, c = assign(wide, cfg.lost_gate)
                match[rest[r]] = cols[c]
                left -= len(r)
        # 5. confident detections left ↔ tentative tracks
        if left and (state == TENTATIVE).any():
            _match(sim, confident[match[confident] < 0], self._gates[2][state], match)

    def _similarity(self, dets: Detections, boxes: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Detections × tracks, against the tracks' predicted boxes and masks moved there."""
        mask_sim = None
        if dets.masks is not None and any(mk is not None for mk in self._masks):
            grid_pred = self.grid.apply(pred)
            moved = [move_mask(mk, self._mask_boxes[r], grid_pred[r]) if mk is not None
                     else np.zeros(dets.masks.shape[1:], np.uint8) for r, mk in enumerate(self._masks)]
            mask_sim = mask_iou(dets.masks, np.stack(moved))
            mask_sim[:, [mk is None for mk in self._masks]] = np.nan
        return similarity(boxes, pred, dets.class_ids, self._classes, mask_sim, self.config.mask_weight)

    def _correct(self, dets: Detections, boxes: np.ndarray, hit: np.ndarray, rows: np.ndarray, dt: float) -> None:
        """Matched tracks take their detection: Kalman update, hits, state, mask."""
        if not len(rows):
            return
        boxes = boxes[hit]
        self._kf.update(rows, boxes)
        hits = self._hits[rows] + 1
        self._hits[rows] = hits
        self._seen[rows] = self._now
        state = self._state[rows]
        if (state != CONFIRMED).any():  # lost → confirmed; tentative → confirmed at min_hits
            self._state[rows] = np.where((state == TENTATIVE) & (hits < self.config.min_hits), TENTATIVE, CONFIRMED)
        if dets.masks is not None:
            self._smooth(dets.masks, hit, rows, self.grid.apply(boxes), state != LOST, dt)

    def _smooth(self, masks: np.ndarray, hit: np.ndarray, rows: np.ndarray, det_boxes: np.ndarray,
                going: np.ndarray, dt: float) -> None:
        """Each matched track's mask becomes a moving average of its detections' masks.

        The previous average is first moved by the motion the filter expects over ``dt``
        (velocity · dt, scale included), not by the change of box: boxes jitter, and following
        them would shake a still object's mask as much as the noise averaged out; only what
        the box moves beyond jitter is followed. The average keeps its own box, averaged
        alike; a track back from lost starts afresh.
        """
        alpha = self.config.smoothing
        labels = det_boxes
        if alpha > 0:
            g = self.grid
            motion = self._kf.velocity[rows] * (dt * np.array([g.sx, g.sy, g.sx, g.sy]))
            moved = cxcywh_to_xyxy(xyxy_to_cxcywh(self._mask_boxes[rows]) + motion)
            # Where the detection's edges are further off than jitter, the velocity lags (the
            # object or the camera sped up): follow the excess, so the average does not trail.
            off = det_boxes - moved
            jitter = _JITTER * 0.5 * (det_boxes[:, 2:] - det_boxes[:, :2]).sum(1, keepdims=True)
            moved += np.sign(off) * np.maximum(np.abs(off) - jitter, 0)
            labels = np.where(going[:, None], alpha * moved + (1 - alpha) * det_boxes, det_boxes)
        for k, (d, r) in enumerate(zip(hit, rows)):
            new = _as_probs(masks[d])
            prev = self._masks[r]
            if alpha > 0 and going[k] and prev is not None:
                prev = move_mask(prev, self._mask_boxes[r], moved[k])
                new = cv2.addWeighted(prev, alpha, new, 1 - alpha, 0.0)  # rounds and saturates to uint8
            self._masks[r] = new
        self._mask_boxes[rows] = labels

    def _age(self, matched: np.ndarray) -> np.ndarray | None:
        """Unmatched tracks: tentative → dropped, confirmed → lost; lost too long → dropped.
        Returns the rows kept, or None when all are."""
        state, missed = self._state, ~matched
        lost = missed & (state == CONFIRMED)
        if lost.any():
            state[lost] = LOST
            self._kf.hold_size(lost)
        # A matched track was seen now, so age alone finds the lost ones past recovery.
        keep = ~((missed & (state == TENTATIVE)) | (self._seen < self._now - self.config.max_lost))
        if keep.all():
            return None
        self._kf.keep(keep)
        self._ids, self._classes, self._state = self._ids[keep], self._classes[keep], state[keep]
        self._hits, self._seen, self._mask_boxes = self._hits[keep], self._seen[keep], self._mask_boxes[keep]
        self._masks = [mk for mk, k in zip(self._masks, keep) if k]
        return keep

    def _birth(self, dets: Detections, boxes: np.ndarray, born: np.ndarray, state: int) -> None:
        if not len(born):
            return
        k = len(born)
        boxes = boxes[born]
        self._kf.add(boxes)
        self._ids = np.concatenate([self._ids, np.arange(self._next_id, self._next_id + k)])
        self._next_id += k
        self._classes = np.concatenate([self._classes, dets.class_ids[born].astype(np.int64)])
        self._state = np.concatenate([self._state, np.full(k, state, np.int8)])
        self._hits = np.concatenate([self._hits, np.ones(k, np.int64)])
        self._seen = np.concatenate([self._seen, np.full(k, self._now)])
        self._mask_boxes = np.concatenate([self._mask_boxes, self.grid.apply(boxes)])
        self._masks += [None if dets.masks is None else _as_probs(dets.masks[d]) for d in born]


def _match(sim: np.ndarray, dets: np.ndarray, gate: np.ndarray, match: np.ndarray) -> int:
    """Assign ``dets`` (rows of ``sim``) to tracks (columns, each with its gate) into ``match``;
    returns how many were matched."""
    if not len(dets):
        return 0
    r, c = assign(sim if len(dets) == len(sim) else sim[dets], gate)
    match[dets[r]] = c
    return len(r)


def _as_probs(mask: np.ndarray) -> np.ndarray:
    """A detection's mask as uint8 probabilities ×255 (bool → 0/255)."""
    return mask.astype(np.uint8) * np.uint8(255) if mask.dtype == bool else mask.astype(np.uint8, copy=True)


def _empty(dets: Detections) -> TrackedObjects:
    """No tracks shown: one shared read-only answer for box-only runs, where it is most frames."""
    if dets.masks is None:
        return _NOTHING
    return replace(_NOTHING, masks=np.zeros((0, *dets.masks.shape[1:]), np.uint8))


# Empty arrays: nothing in them can be written, so one answer serves every empty frame.
_NOTHING = TrackedObjects(track_ids=_NONE, detection=_NONE, boxes=np.zeros((0, 4), np.float32),
                          scores=np.zeros(0, np.float32), class_ids=_NONE)
