"""A simple box tracker: optimal assignment on box IoU within a class, ids from its own counter.

Enough to keep ids steady on a road video; the mask-aware tracker replaces it behind the
same interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from segengine.layers.instances import Instances
from segengine.tracking.association import box_iou


@dataclass
class _Track:
    id: int
    box: np.ndarray
    class_id: int
    last_seen: float
    hits: int = 1


class IouTracker:
    """Match detections to tracks by IoU ≥ ``min_iou`` (same class); unmatched detections start
    tracks; a track unseen for ``max_age`` seconds is dropped, so memory stays bounded."""

    def __init__(self, *, min_iou: float = 0.3, max_age: float = 1.0) -> None:
        self.min_iou = min_iou
        self.max_age = max_age
        self._tracks: list[_Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self._tracks = []
        self._next_id = 1

    def update(self, instances: Instances, t: float) -> Instances:
        self._tracks = [tr for tr in self._tracks if t - tr.last_seen <= self.max_age]
        ids = np.full(len(instances), -1, np.int64)
        if len(instances) and self._tracks:
            iou = box_iou(instances.boxes, np.stack([tr.box for tr in self._tracks]))
            same = instances.class_ids[:, None] == np.array([tr.class_id for tr in self._tracks])[None, :]
            cost = np.where(same & (iou >= self.min_iou), 1.0 - iou, 10.0)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] < 10.0:
                    track = self._tracks[c]
                    track.box, track.last_seen, track.hits = instances.boxes[r].copy(), t, track.hits + 1
                    ids[r] = track.id
        for r in np.flatnonzero(ids < 0):
            track = _Track(self._next_id, instances.boxes[r].copy(), int(instances.class_ids[r]), t)
            self._next_id += 1
            self._tracks.append(track)
            ids[r] = track.id
        return instances.with_tracks(ids)
