"""Lane lines: the network's lane map at model resolution, and the polylines fitted from it.

The graph gives the map; the per-stream ``LaneFollower`` stage fits polylines (frame pixels,
top to bottom, left to right) and smooths them over time. Until it has run, ``polylines`` is None
and the drawer tints the raw map instead, so nothing is hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import cv2
import numpy as np

from segengine.checks import check
from segengine.layers.lane_fit import LaneSmoother, Polylines, fit_lanes
from segengine.layers.maps import ClassMap
from segengine.render.draw import SHIFT, check_opacity, smooth_class_mask, tint_where
from segengine.render.palette import Colour


@dataclass(frozen=True, eq=False)
class LaneLines(ClassMap):
    polylines: Polylines | None = None  # each K×2 float32 (x, y) in frame pixels; None: not fitted yet

    kind: ClassVar[str] = "lane_lines"
    z: ClassVar[int] = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        for line in self.polylines or ():
            check(line.ndim == 2 and line.shape[1] == 2, "LaneLines.polylines[i]", "K×2", line.shape)

    @classmethod
    def drawer(cls) -> LaneDrawer:
        return LaneDrawer()

    @classmethod
    def stage(cls) -> LaneFollower:
        return LaneFollower()

    def to_json(self, *, masks: bool = True) -> dict[str, Any]:
        """The map's keys, and ``"polylines": [[[x, y], ...], ...]`` in frame pixels (null: not fitted)."""
        lines = None if self.polylines is None else [
            [[round(float(x), 2), round(float(y), 2)] for x, y in line] for line in self.polylines]
        return {**super().to_json(masks=masks), "polylines": lines}


class LaneFollower:
    """Fits each frame's lanes and smooths them over time; one per stream. On a frame the networks
    skipped it holds the last lanes: lane lines move slowly, and there is no map to fit."""

    def __init__(self) -> None:
        self._smoother = LaneSmoother()
        self._last: LaneLines | None = None

    def update(self, layer: LaneLines, t: float) -> LaneLines:
        self._last = replace(layer, polylines=self._smoother.update(fit_lanes(layer.classes, layer.placement)))
        return self._last

    def carry(self, t: float) -> LaneLines | None:
        return self._last

    def reset(self) -> None:
        self._smoother.reset()
        self._last = None


@dataclass(frozen=True)
class LaneDrawer:
    """Bright lines on a dark casing (visible on pale concrete and on asphalt); the map tinted when
    no polylines were fitted."""

    colour: Colour = (255, 236, 64)
    map_alpha: float = 0.7

    def __post_init__(self) -> None:
        check_opacity("LaneDrawer.map_alpha", self.map_alpha)

    def draw(self, canvas: np.ndarray, result: Any) -> None:
        for layer in result.all(LaneLines):
            if layer.polylines is None:
                tint_where(canvas, smooth_class_mask(layer.classes, layer.placement), self.colour, self.map_alpha)
            elif layer.polylines:
                thick = max(2, round(min(canvas.shape[:2]) / 200))
                pts = [np.round(p * (1 << SHIFT)).astype(np.int32) for p in layer.polylines if len(p) >= 2]
                cv2.polylines(canvas, pts, False, (20, 20, 20), thick + 2, cv2.LINE_AA, SHIFT)
                cv2.polylines(canvas, pts, False, self.colour, thick, cv2.LINE_AA, SHIFT)
