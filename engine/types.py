"""The data that moves through the engine: small, frozen, checked.

The per-output layers (instances, maps, lanes, ...) live in ``segengine.layers``, one file per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Literal, TypeVar

import numpy as np

from segengine.checks import check
from segengine.errors import ConfigError
from segengine.layers import BinaryMap, Instances, LaneLines, SemanticMap

SourceState = Literal["idle", "streaming", "reconnecting", "ended", "failed", "closed"]


@dataclass(frozen=True, eq=False)
class Frame:
    image: np.ndarray  # H×W×3 uint8, RGB
    index: int  # 0-based position in its stream
    pts: float  # seconds, from the container (never derived from fps)
    stream: str = "0"
    captured_at: float = 0.0  # time.monotonic() when it was read, for latency

    def __post_init__(self) -> None:
        img = self.image
        check(isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8,
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


L = TypeVar("L")


@dataclass(frozen=True, eq=False)
class FrameResult:
    """One frame and everything the engine found in it: ``layers`` by output name (see
    ``segengine.layers``), with typed accessors for the common kinds."""

    frame: Frame
    layers: Mapping[str, Any] = field(default_factory=dict)  # output name → layer (Instances, LaneLines, ...)
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    rendered: np.ndarray | None = None  # the overlay, once the renderer ran
    source: SourceStatus | None = None  # the source's health when this frame was finished
    # False: the networks skipped this frame (``--interval N``) and its layers were carried from the
    # last inferred frame (tracks moved by their predicted motion, maps and lanes as they were).
    inferred: bool = True

    def all(self, kind: type[L]) -> list[L]:
        """Every layer of type ``kind``, in the graph's output order."""
        return [layer for layer in self.layers.values() if isinstance(layer, kind)]

    def first(self, kind: type[L]) -> L | None:
        """The first layer of type ``kind`` (in the graph's output order), or None."""
        return next(iter(self.all(kind)), None)

    def get(self, name: str, kind: type[L]) -> L:
        """The layer named ``name``, checked to be a ``kind``."""
        layer = self.layers.get(name)
        if not isinstance(layer, kind):
            have = ", ".join(f"{n} ({type(v).__name__})" for n, v in self.layers.items()) or "none"
            raise ConfigError(f"this result has no {kind.__name__} layer named {name!r} (layers: {have})")
        return layer

    def with_layer(self, name: str, layer: object) -> FrameResult:
        return replace(self, layers={**self.layers, name: layer})

    @property
    def instances(self) -> Instances | None:
        return self.first(Instances)

    @property
    def drivable(self) -> BinaryMap | None:
        return self.first(BinaryMap)

    @property
    def lanes(self) -> LaneLines | None:
        return self.first(LaneLines)

    @property
    def semantic(self) -> SemanticMap | None:
        return self.first(SemanticMap)
