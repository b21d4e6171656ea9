"""In-graph pre-processing: an RGB uint8 frame in, a network's float32 NCHW input out.

Resizing is bilinear with half-pixel centres and no antialiasing, the function OpenCV's
INTER_LINEAR computes, which is what every upstream model here was trained and
evaluated with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.card import Preprocess


@dataclass(frozen=True)
class Placement:
    """Where a frame lands inside a network input: ``input = frame * scale + (left, top)``."""

    frame_size: tuple[int, int]  # (height, width)
    input_size: tuple[int, int]  # (height, width)
    resized: tuple[int, int]  # (height, width) of the frame once scaled
    top: int
    left: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized[1] / self.frame_size[1], self.resized[0] / self.frame_size[0]

    def to_dict(self) -> dict[str, object]:
        return {
            "frame_size": list(self.frame_size),
            "input_size": list(self.input_size),
            "resized": list(self.resized),
            "top": self.top,
            "left": self.left,
        }


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


class FramePreprocess(torch.nn.Module):
    """uint8 N×H×W×3 RGB → float32 N×3×h×w, placed and normalised as upstream does."""

    def __init__(self, placement: Placement, recipe: Preprocess) -> None:
        super().__init__()
        self.placement = placement
        self.pad_value = float(recipe.pad_value)
        mean = torch.tensor(recipe.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(recipe.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add.
        self.register_buffer("gain", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("offset", -mean / std, persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        p = self.placement
        x = frame.permute(0, 3, 1, 2).float()
        if p.resized != p.frame_size:
            # Rounded back to whole values, as OpenCV's uint8 resize does.
            x = F.interpolate(x, size=p.resized, mode="bilinear", align_corners=False).round()
        if p.resized != p.input_size:
            bottom = p.input_size[0] - p.resized[0] - p.top
            right = p.input_size[1] - p.resized[1] - p.left
            x = F.pad(x, (p.left, right, p.top, bottom), value=self.pad_value)
        return x * self.gain + self.offset
