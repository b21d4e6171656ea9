"""Host-side reading of graph outputs: class maps and instance masks brought back to frame pixels."""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np

from segengine.geometry import Placement


def frame_region(placement: Placement, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a model-resolution array (``shape``) that cover the frame (no padding)."""
    (ih, iw), (rh, rw) = placement.input_size, placement.resized
    sy, sx = shape[0] / ih, shape[1] / iw
    top, left = placement.top, placement.left
    return (slice(round(top * sy), round((top + rh) * sy)), slice(round(left * sx), round((left + rw) * sx)))


def map_to_frame(class_map: np.ndarray, placement: Placement) -> np.ndarray:
    """uint8 h×w class map at model resolution → H×W at frame resolution (nearest)."""
    fh, fw = placement.frame_size
    rows, cols = frame_region(placement, class_map.shape[-2:])
    return cv2.resize(np.ascontiguousarray(class_map[rows, cols]), (fw, fh), interpolation=cv2.INTER_NEAREST)


def masks_to_frame(masks: np.ndarray, placement: Placement) -> np.ndarray:
    """uint8 K×mh×mw mask probabilities (×255) at prototype resolution → bool K×H×W at frame resolution.

    Upstream's path, step by step: probabilities upsampled to the network input and
    thresholded at 0.5, padding cut away, then the binary mask resized to the frame.
    """
    fh, fw = placement.frame_size
    ih, iw = placement.input_size
    rows, cols = frame_region(placement, (ih, iw))
    out = np.empty((len(masks), fh, fw), dtype=bool)
    for start in range(0, len(masks), 256):  # cv2 handles at most 512 channels at once
        chunk = np.ascontiguousarray(masks[start:start + 256].transpose(1, 2, 0))
        full = cv2.resize(chunk, (iw, ih), interpolation=cv2.INTER_LINEAR).reshape(ih, iw, -1)
        binary = np.ascontiguousarray((full[rows, cols] >= 128).astype(np.uint8) * 255)
        resized = cv2.resize(binary, (fw, fh), interpolation=cv2.INTER_LINEAR).reshape(fh, fw, -1)
        out[start:start + 256] = (resized >= 128).transpose(2, 0, 1)
    return out


def _aligned(lo: float, hi: float, step: int, limit: int, margin: int) -> tuple[int, int]:
    """[lo, hi) widened by ``margin``, its start a multiple of ``step``, clipped to [0, limit]."""
    start = max(0, (math.floor(lo) - margin) // step * step)
    end = min(limit, -(-(math.ceil(hi) + margin) // step) * step)
    return start, end


def box_masks(masks: np.ndarray, boxes: np.ndarray, placement: Placement) -> list[tuple[int, int, np.ndarray]]:
    """Each instance's mask at frame resolution, only around its box: ``(x0, y0, bool h×w)``.

    The same two resizes as :func:`masks_to_frame`, on windows whose corners fall on the
    points where the frame, input and prototype grids line up, so every pixel gets the
    same interpolation weights as in the full-size computation, at a fraction of the cost.
    """
    fh, fw = placement.frame_size
    (ih, iw), (rh, rw) = placement.input_size, placement.resized
    mh, mw = masks.shape[1:]
    # frame → resized input (per axis p/q) and prototype → input (per axis g = n/d).
    sy, sx = Fraction(rh, fh), Fraction(rw, fw)
    gy, gx = Fraction(ih, mh), Fraction(iw, mw)
    # Masks are cut at the box on the prototype grid, so they reach up to a cell past it,
    # and interpolation spreads them half a cell further: the window leaves room for both.
    mx, my = math.ceil(1.5 * gx / sx) + 2, math.ceil(1.5 * gy / sy) + 2
    out = []
    for probs, (bx0, by0, bx1, by1) in zip(masks, boxes):
        fx0, fx1 = _aligned(bx0, bx1, sx.denominator, fw, mx)
        fy0, fy1 = _aligned(by0, by1, sy.denominator, fh, my)
        if fx1 <= fx0 or fy1 <= fy0:
            out.append((fx0, fy0, np.zeros((max(fy1 - fy0, 0), max(fx1 - fx0, 0)), bool)))
            continue
        # The window in network-input pixels (whole numbers by construction).
        ix0, ix1 = int(fx0 * sx) + placement.left, int(fx1 * sx) + placement.left
        iy0, iy1 = int(fy0 * sy) + placement.top, int(fy1 * sy) + placement.top
        # The prototype cells under it, with a margin for the bilinear neighbours.
        px0, px1 = _aligned(ix0 / gx, ix1 / gx, gx.denominator, mw, 2)
        py0, py1 = _aligned(iy0 / gy, iy1 / gy, gy.denominator, mh, 2)
        up = cv2.resize(probs[py0:py1, px0:px1], (int((px1 - px0) * gx), int((py1 - py0) * gy)),
                        interpolation=cv2.INTER_LINEAR)
        ox, oy = ix0 - int(px0 * gx), iy0 - int(py0 * gy)
        binary = (up[oy:oy + iy1 - iy0, ox:ox + ix1 - ix0] >= 128).astype(np.uint8) * np.uint8(255)
        frame = cv2.resize(binary, (fx1 - fx0, fy1 - fy0), interpolation=cv2.INTER_LINEAR)
        out.append((fx0, fy0, frame >= 128))
    return out
