"""In-graph pre-processing: an RGB uint8 frame in, a network's float32 NCHW input out.

Every upstream model here was trained and evaluated on frames resized by OpenCV's
``INTER_LINEAR``. Plain float bilinear differs from it by up to 0.75 grey levels, with a
bias (OpenCV works in 11-bit fixed point and truncates between its two passes), and
that is enough to flip detections that sit on a threshold. So the resize here repeats
OpenCV's integer arithmetic exactly, in int32 graph ops (gathers, multiplies, divides)
that ONNX Runtime and TensorRT both run. The frame is cast to float32 first of all, since
TensorRT converts uint8 to nothing else.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from segengine.geometry import Placement
from segengine.graph.intdiv import floor_div
from segengine.models.card import Preprocess


def _linear_taps(src: int, dst: int, *, clamp: bool) -> tuple[torch.Tensor, ...]:
    """OpenCV's two taps per output position: source indices and weights scaled by 2048.

    OpenCV clamps the fraction at the borders horizontally but not vertically (there it
    clamps only the rows), and computes positions in float32; both matter for exactness.
    """
    pos = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first).astype(np.float32)
    if clamp:
        low, high = first < 0, first >= src - 1
        frac[low | high] = 0
        first = np.where(low, 0, np.where(high, src - 1, first))
    w0 = np.round((1 - frac) * 2048).astype(np.int32)
    w1 = np.round(frac * 2048).astype(np.int32)
    i0 = np.clip(first, 0, src - 1)
    i1 = np.clip(first + 1, 0, src - 1)
    return tuple(torch.from_numpy(a) for a in (i0, i1, w0, w1))


class OpenCVLinearResize(torch.nn.Module):
    """uint8 N×H×W×3 → int32 N×h×w×3, equal bit for bit to ``cv2.resize(..., INTER_LINEAR)``.

    Which terms are all zero is known when the graph is built, and their ops are left out: at
    common ratios (3:2, 2:1, 3:1) every weight is a multiple of 16 horizontally and of 64
    vertically, or a second tap is unused, and those ops would only multiply by zero or divide
    what is already divisible.
    """

    def __init__(self, src: tuple[int, int], dst: tuple[int, int]) -> None:
        super().__init__()
        x0, x1, xw0, xw1 = _linear_taps(src[1], dst[1], clamp=True)
        # Exact: OpenCV's first step drops 4 bits of the horizontal sum.
        self.x_div16 = bool((xw0 % 16).any() or (xw1 % 16).any())
        scale = 1 if self.x_div16 else 16
        self.x_used = (True, bool(xw1.any()))  # weights sum to 2048: the first tap is never all zero
        for i, (index, w) in enumerate(((x0, xw0), (x1, xw1))):
            self.register_buffer(f"x{i}", index, persistent=False)
            # Repeated over the 3 channels: broadcasting a weight over an inner axis of 3
            # makes ONNX Runtime and OpenVINO multiply in 3-element runs, several times slower.
            w = (w // scale).view(1, 1, -1, 1).expand(1, 1, -1, 3).contiguous()
            self.register_buffer(f"xw{i}", w, persistent=False)
        y0, y1, yw0, yw1 = _linear_taps(src[0], dst[0], clamp=False)
        self.y_terms = tuple((bool(w.any()), bool((w % 64).any())) for w in (yw0, yw1))
        for i, (index, w) in enumerate(((y0, yw0), (y1, yw1))):
            self.register_buffer(f"y{i}", index, persistent=False)
            # Split in 64ths: see _mulhi.
            self.register_buffer(f"yw{i}_hi", (w // 64).view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"yw{i}_lo", (w % 64).view(1, -1, 1, 1), persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        # Through float32 (exact for 0..255): TensorRT converts uint8 only to and from
        # float32/float16, and 10.0-10.5 may refuse a uint8 → int32 cast, and the graph with it.
        # The arithmetic stays in int32, which no fp16 engine narrows (float would overflow it).
        x = frame.to(torch.float32).to(torch.int32)
        # index_select exports as one Gather per pass (indexing as x[:, :, i] exports as
        # GatherND between two full-size Transposes).
        # Horizontal pass: exact integers scaled by 2048 (at most 255 * 2048).
        rows = x.index_select(2, self.x0) * self.xw0
        if self.x_used[1]:
            rows = rows + x.index_select(2, self.x1) * self.xw1
        # Vertical pass as OpenCV's SIMD code: drop 4 bits, multiply, keep the high 16 bits,
        # then round away the last 2. Values are never negative, so truncation is floor.
        # The 4 bits go before the rows are picked: once per source row, not twice per output row.
        if self.x_div16:
            rows = floor_div(rows, 16)
        taps = ((self.y0, self.yw0_hi, self.yw0_lo), (self.y1, self.yw1_hi, self.yw1_lo))
        terms = [_mulhi(rows.index_select(1, index), w_hi, w_lo if has_lo else None)
                 for (index, w_hi, w_lo), (used, has_lo) in zip(taps, self.y_terms) if used]
        total = terms[0] if len(terms) == 1 else terms[0] + terms[1]  # weights sum to 2048: one is used
        return floor_div(total + 2, 4).clamp(0, 255)


def _mulhi(a: torch.Tensor, w_hi: torch.Tensor, w_lo: torch.Tensor | None) -> torch.Tensor:
    """``(a * w) >> 16`` for ``a < 2**15``, ``w = 64 * w_hi + w_lo <= 2048``, with every
    intermediate below 2**21. ``a * w`` reaches 2**26, and OpenVINO's CPU plugin was seen to
    get one pixel in 691200 wrong from it, as float32 arithmetic (exact below 2**24) would.
    ``w_lo`` None: all zero."""
    high = a * w_hi
    return floor_div(high if w_lo is None else high + floor_div(a * w_lo, 64), 1024)


class FramePreprocess(torch.nn.Module):
    """uint8 N×H×W×3 RGB → float32 N×3×h×w, placed and normalised as upstream does."""

    def __init__(self, placement: Placement, recipe: Preprocess) -> None:
        super().__init__()
        self.placement = placement
        self.pad_value = float(recipe.pad_value)
        self.resize = OpenCVLinearResize(placement.frame_size, placement.resized)
        mean = torch.tensor(recipe.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(recipe.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add.
        self.register_buffer("gain", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("offset", -mean / std, persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        p = self.placement
        if p.resized != p.frame_size:
            frame = self.resize(frame)
        # Cast before the permute: a frame already at the model's size is still uint8 here, and
        # TensorRT transposes no uint8.
        x = frame.float().permute(0, 3, 1, 2)
        if p.resized != p.input_size:
            bottom = p.input_size[0] - p.resized[0] - p.top
            right = p.input_size[1] - p.resized[1] - p.left
            x = F.pad(x, (p.left, right, p.top, bottom), value=self.pad_value)
        return x * self.gain + self.offset
