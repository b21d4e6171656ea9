"""Host-side reading of graph outputs: class maps and instance masks brought back to frame pixels."""

from __future__ import annotations

import cv2
import numpy as np

from engine.geometry import Placement


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
