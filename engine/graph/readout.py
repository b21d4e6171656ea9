"""Host-side reading of graph outputs: class maps and instance masks brought back to frame pixels."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np


def _region(placement: Mapping[str, object], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The part of a model-resolution array (``shape``) that covers the frame, without padding."""
    ih, iw = placement["input_size"]  # type: ignore[misc]
    rh, rw = placement["resized"]  # type: ignore[misc]
    top, left = placement["top"], placement["left"]
    sy, sx = shape[0] / ih, shape[1] / iw
    return (slice(round(top * sy), round((top + rh) * sy)),  # type: ignore[operator]
            slice(round(left * sx), round((left + rw) * sx)))  # type: ignore[operator]


def map_to_frame(class_map: np.ndarray, placement: Mapping[str, object]) -> np.ndarray:
    """uint8 h×w class map at model resolution → H×W at frame resolution (nearest)."""
    fh, fw = placement["frame_size"]  # type: ignore[misc]
    rows, cols = _region(placement, class_map.shape[-2:])
    return cv2.resize(np.ascontiguousarray(class_map[rows, cols]), (fw, fh), interpolation=cv2.INTER_NEAREST)


def masks_to_frame(masks: np.ndarray, placement: Mapping[str, object]) -> np.ndarray:
    """uint8 K×mh×mw mask probabilities (×255) at prototype resolution → bool K×H×W at frame resolution.

    Probabilities are interpolated before the 0.5 threshold, as upstream does, so edges stay smooth.
    """
    fh, fw = placement["frame_size"]  # type: ignore[misc]
    if len(masks) == 0:
        return np.zeros((0, fh, fw), dtype=bool)
    rows, cols = _region(placement, masks.shape[-2:])
    out = np.empty((len(masks), fh, fw), dtype=bool)
    for start in range(0, len(masks), 256):  # cv2 handles at most 512 channels at once
        chunk = np.ascontiguousarray(masks[start:start + 256, rows, cols].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (fw, fh), interpolation=cv2.INTER_LINEAR)
        out[start:start + 256] = (resized.reshape(fh, fw, -1) >= 128).transpose(2, 0, 1)
    return out
