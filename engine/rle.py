"""COCO run-length encoding (pycocotools' own), the form every mask and map takes in JSON."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": str}`` of one h×w mask (bool, or nonzero = inside); the inverse of
    :func:`decode_mask`. A column-major bool mask is encoded without a copy."""
    rle = mask_utils.encode(np.asfortranarray((mask if mask.dtype == bool else mask != 0).view(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """bool h×w mask from a ``{"size": [h, w], "counts": str}`` COCO RLE."""
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)


def encode_windows(windows: list[tuple[int, int, np.ndarray]], frame_size: tuple[int, int]) -> list[dict[str, Any]]:
    """RLE at frame resolution of masks given as ``(x0, y0, bool window)`` inside an H×W frame.

    pycocotools wants each whole mask in column-major order. Building it as a zeroed W×H array
    with only the window filled in, then passing its transpose (a column-major view), costs a
    memset instead of transposing full-frame masks.
    """
    h, w = frame_size
    rles = []
    for x0, y0, window in windows:
        columns = np.zeros((w, h), np.uint8)
        columns[x0:x0 + window.shape[1], y0:y0 + window.shape[0]] = window.T
        rle = mask_utils.encode(columns.T)  # .T of a C-ordered W×H array is Fortran-ordered H×W
        rles.append({"size": [h, w], "counts": rle["counts"].decode("ascii")})
    return rles
