"""Where a frame sits inside a network's input, and how to get back (no torch needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Where a frame lands inside a network input: scaled to ``resized``, then offset by (top, left)."""

    frame_size: tuple[int, int]  # (height, width)
    input_size: tuple[int, int]  # (height, width)
    resized: tuple[int, int]  # (height, width) of the frame once scaled
    top: int
    left: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized[1] / self.frame_size[1], self.resized[0] / self.frame_size[0]

    def to_dict(self) -> dict[str, object]:
        return {"frame_size": list(self.frame_size), "input_size": list(self.input_size),
                "resized": list(self.resized), "top": self.top, "left": self.left}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Placement:
        return cls(tuple(d["frame_size"]), tuple(d["input_size"]), tuple(d["resized"]),  # type: ignore[arg-type]
                   int(d["top"]), int(d["left"]))  # type: ignore[arg-type]


def stretch(frame_size: tuple[int, int], input_size: tuple[int, int]) -> Placement:
    return Placement(frame_size, input_size, input_size, 0, 0)


def letterbox(frame_size: tuple[int, int], long_side: int = 640, stride: int = 32,
              canvas: tuple[int, int] | None = None) -> Placement:
    """Fit the frame inside ``long_side`` keeping its aspect.

    Without ``canvas`` the padded input is the smallest multiple of ``stride`` that
    holds the scaled frame (640×384 for 16:9), so no compute is spent on padding; a
    given ``canvas`` (e.g. upstream's square 640×640) is used as it is.
    """
    h, w = frame_size
    if canvas is None:
        r = long_side / max(h, w)
        nh, nw = round(h * r), round(w * r)
        canvas = (math.ceil(nh / stride) * stride, math.ceil(nw / stride) * stride)
    else:
        r = min(canvas[0] / h, canvas[1] / w)
        nh, nw = round(h * r), round(w * r)
    return Placement(frame_size, canvas, (nh, nw), (canvas[0] - nh) // 2, (canvas[1] - nw) // 2)
