"""The data that moves through the engine: small, frozen, checked.

Masks stay at model resolution (the prototype grid over the network input) with the
``Placement`` that maps them to the frame; full-frame masks are made only on demand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from fractions import Fraction
from typing import Literal

import numpy as np

from segengine.errors import ConfigError
from segengine.geometry import Placement
from segengine.graph.readout import box_masks, map_to_frame

Memory = Literal["host", "pinned", "device"]
SourceState = Literal["idle", "streaming", "reconnecting", "ended", "failed", "closed"]


def _check(cond: bool, what: str, expected: str, actual: object) -> None:
    if not cond:
        raise ConfigError(f"{what}: expected {expected}, got {actual}")


@dataclass(frozen=True, eq=False)
class Frame:
    image: np.ndarray  # H×W×3 uint8, RGB
    index: int  # 0-based position in its stream
    pts: float  # seconds, from the container (never derived from fps)
    stream: str = "0"
    memory: Memory = "host"
    captured_at: float = 0.0  # time.monotonic() when it was read, for latency

    def __post_init__(self) -> None:
        img = self.image
        _check(isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8,
               "Frame.image", "an H×W×3 uint8 array",
               f"{getattr(img, 'shape', type(img))} {getattr(img, 'dtype', '')}")

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


@dataclass(frozen=True)
class SourceInfo:
    """What a source knows about itself before the first frame."""

    name: str  # for messages; credentials already redacted
    live: bool  # live sources drop the oldest frame; files never drop
    size: tuple[int, int] | None = None  # (height, width)
    fps: Fraction | None = None  # nominal, for writers; timing always comes from pts
    frame_count: int | None = None  # when the container knows it
    time_base: Fraction | None = None  # the container's, so writers can keep exact timestamps


@dataclass(frozen=True)
class SourceStatus:
    """A source's health at one moment; sources replace it (never mutate it), so a reader on
    another thread always sees one consistent snapshot."""

    state: SourceState = "idle"
    frames: int = 0  # frames the source handed out
    dropped: int = 0  # frames dropped to keep a live feed's latency bounded (the capture thread's)
    skipped: int = 0  # corrupt frames or packets left out (rate-limited warnings say where)
    reconnects: int = 0  # successful reconnections of a live source
    gaps: int = 0  # jumps in the stream's time (an outage, lost packets, a timestamp discontinuity)
    partial: str | None = None  # why a file ended before its declared length, when it did

    @property
    def damaged(self) -> bool:
        """Frames of the input were lost to corruption or truncation."""
        return self.skipped > 0 or self.partial is not None

    def closed(self) -> SourceStatus:
        """This status once its source is closed: an end or a failure stays what it was."""
        return self if self.state in ("ended", "failed") else replace(self, state="closed")

    def line(self) -> str:
        text = (f"{self.state}: {self.frames} frames read, {self.dropped} dropped, {self.skipped} skipped "
                f"(corrupt), {self.reconnects} reconnects, {self.gaps} gaps")
        return text + (f"; partial: {self.partial}" if self.partial else "")


@dataclass(frozen=True, eq=False)
class Instances:
    boxes: np.ndarray  # N×4 float32, xyxy in frame pixels
    scores: np.ndarray  # N float32
    class_ids: np.ndarray  # N int32
    masks: np.ndarray  # N×h×w uint8 probabilities ×255 on the prototype grid
    placement: Placement  # maps the mask grid to the frame
    class_names: tuple[str, ...]
    track_ids: np.ndarray = field(default=None)  # type: ignore[assignment]  # N int64, -1 = untracked

    def __post_init__(self) -> None:
        n = len(self.boxes)
        _check(self.boxes.shape == (n, 4), "Instances.boxes", "N×4", self.boxes.shape)
        _check(self.scores.shape == (n,), "Instances.scores", f"({n},)", self.scores.shape)
        _check(self.class_ids.shape == (n,), "Instances.class_ids", f"({n},)", self.class_ids.shape)
        _check(self.masks.ndim == 3 and len(self.masks) == n and self.masks.dtype == np.uint8,
               "Instances.masks", f"{n}×h×w uint8", f"{self.masks.shape} {self.masks.dtype}")
        if self.track_ids is None:
            object.__setattr__(self, "track_ids", np.full(n, -1, np.int64))
        _check(self.track_ids.shape == (n,), "Instances.track_ids", f"({n},)", self.track_ids.shape)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.class_ids]

    def with_tracks(self, track_ids: np.ndarray) -> Instances:
        return replace(self, track_ids=np.asarray(track_ids, np.int64))

    def select(self, keep: np.ndarray) -> Instances:
        return replace(self, boxes=self.boxes[keep], scores=self.scores[keep], class_ids=self.class_ids[keep],
                       masks=self.masks[keep], track_ids=self.track_ids[keep])

    @cached_property
    def box_masks(self) -> list[tuple[int, int, np.ndarray]]:
        """Per instance ``(x0, y0, bool h×w)``: its mask at frame resolution around its box (made once)."""
        return box_masks(self.masks, self.boxes, self.placement)

    def frame_masks(self) -> np.ndarray:
        """bool N×H×W at frame resolution (2 MB per mask at 1080p: prefer ``box_masks``)."""
        out = np.zeros((len(self), *self.placement.frame_size), bool)
        for k, (x0, y0, m) in enumerate(self.box_masks):
            out[k, y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
        return out

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray], placement: Placement,
                     class_names: tuple[str, ...]) -> Instances:
        """From a graph's padded top-K outputs (batch row 0): keep the rows with a score."""
        valid = outputs["scores"][0] > 0
        return cls(boxes=outputs["boxes"][0][valid].astype(np.float32),
                   scores=outputs["scores"][0][valid].astype(np.float32),
                   class_ids=outputs["classes"][0][valid].astype(np.int32),
                   masks=outputs["masks"][0][valid], placement=placement, class_names=class_names)


@dataclass(frozen=True, eq=False)
class SemanticMap:
    classes: np.ndarray  # h×w uint8 class ids at model resolution
    placement: Placement
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(self.classes.ndim == 2 and self.classes.dtype == np.uint8, "SemanticMap.classes",
               "an h×w uint8 map", f"{self.classes.shape} {self.classes.dtype}")

    def to_frame(self) -> np.ndarray:
        return map_to_frame(self.classes, self.placement)


@dataclass(frozen=True, eq=False)
class Lanes:
    polylines: tuple[np.ndarray, ...]  # each K×2 float32 (x, y) in frame pixels, top to bottom

    def __post_init__(self) -> None:
        for line in self.polylines:
            _check(line.ndim == 2 and line.shape[1] == 2, "Lanes.polylines[i]", "K×2", line.shape)


@dataclass(frozen=True, eq=False)
class FrameResult:
    frame: Frame
    instances: Instances | None = None
    drivable: SemanticMap | None = None  # class 1 = drivable
    lane_mask: SemanticMap | None = None  # class 1 = lane line
    lanes: Lanes | None = None
    semantic: SemanticMap | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    rendered: np.ndarray | None = None  # the overlay, once the renderer ran
    source: SourceStatus | None = None  # the source's health when this frame was finished

    def with_timing(self, stage: str, seconds: float) -> FrameResult:
        return replace(self, timings={**self.timings, stage: seconds})
