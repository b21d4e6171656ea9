"""The Tracker interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from segengine.errors import ConfigError
from segengine.layers.instances import Instances


@runtime_checkable
class Tracker(Protocol):
    def update(self, instances: Instances, t: float) -> Instances:
        """``instances`` with ``track_ids`` filled; ``t`` is the frame's time in seconds.
        Never mutates its input; ids come from this tracker's own counter."""
        ...

    def reset(self) -> None: ...


@dataclass(frozen=True, eq=False)
class Detections:
    """One frame's detections for a tracker, in whatever coordinates the caller uses consistently.

    ``masks``: N×h×w at any resolution fixed for the run (bool, or uint8 probabilities ×255
    thresholded at 128); None when the detector gives boxes only.
    """

    boxes: np.ndarray  # N×4 float, xyxy
    scores: np.ndarray  # N float
    class_ids: np.ndarray  # N int
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.class_ids.shape != (n,):
            raise ConfigError(f"Detections: expected boxes N×4, scores (N,), class_ids (N,); got "
                              f"{self.boxes.shape}, {self.scores.shape}, {self.class_ids.shape}")
        if self.masks is not None and (self.masks.ndim != 3 or len(self.masks) != n):
            raise ConfigError(f"Detections.masks: expected {n}×h×w, got {self.masks.shape}")

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True, eq=False)
class TrackedObjects:
    """What a tracker reports for one frame: one row per track shown in this frame."""

    track_ids: np.ndarray  # M int64, from the tracker's own counter (1, 2, ...)
    detection: np.ndarray  # M int: the input detection each row came from
    boxes: np.ndarray  # M×4 float (the detection's box)
    scores: np.ndarray  # M float
    class_ids: np.ndarray  # M int (the track's class)
    masks: np.ndarray | None = None  # M×h×w uint8 probabilities ×255, smoothed over time when enabled

    def __len__(self) -> int:
        return len(self.track_ids)
