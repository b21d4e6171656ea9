"""Similarities between detections and tracks, and gated optimal assignment.

Everything works in similarities (1 = same object, 0 = unrelated); the assignment turns
them into costs. Class consistency is a **gate**, not a penalty: a track keeps one class
for its life (the class it reports), a car that becomes a truck for a frame is a detector
error we would rather not propagate into identities, and per-class evaluation counts a
track that changes class as wrong either way. A detector whose classes flicker between
near-synonyms should merge them before tracking.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from segengine.errors import ConfigError
from segengine.geometry import Placement

_GATED = -1.0  # similarity of a pair that may never match (below every gate)
_EMPTY = np.zeros(0, np.intp)
_ZERO = np.zeros(1, np.intp)
_EMPTY.flags.writeable = _ZERO.flags.writeable = False  # shared answers: nobody may write to them
_GROW = np.array([[-1.0, 0, 1, 0], [0, -1, 0, 1]])  # (w, h) → (−w, −h, +w, +h)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of N×4 and M×4 xyxy boxes → N×M (degenerate boxes have area 0)."""
    wh = np.minimum(a[:, None, 2:], b[:, 2:])
    wh -= np.maximum(a[:, None, :2], b[:, :2])
    np.maximum(wh, 0, out=wh)
    inter = wh[..., 0] * wh[..., 1]
    sa = np.maximum(a[:, 2:] - a[:, :2], 0)
    sb = np.maximum(b[:, 2:] - b[:, :2], 0)
    union = (sa[:, 0] * sa[:, 1])[:, None] + sb[:, 0] * sb[:, 1]
    union -= inter
    return inter / np.maximum(union, 1e-9)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """N×h×w masks (bool, or uint8 probabilities ×255 thresholded at 128) → N×words uint64 bits.

    Bits rather than a float32 matrix product: exact counts, an eighth of the memory traffic,
    and no BLAS threads (a multithreaded GEMM fighting the inference thread for two cores was
    30× slower than this here).
    """
    flat = masks.reshape(len(masks), -1)
    packed = np.packbits(flat if flat.dtype == bool else flat >= 128, axis=1)
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return packed.view(np.uint64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of N×h×w and M×h×w masks (or their :func:`pack_masks`) → N×M; empty ∪ empty → 0."""
    pa = a if a.dtype == np.uint64 and a.ndim == 2 else pack_masks(a)
    pb = b if b.dtype == np.uint64 and b.ndim == 2 else pack_masks(b)
    inter = np.empty((len(pa), len(pb)))
    step = max(1, (1 << 17) // max(1, len(pb) * pb.shape[1]))  # bounds the N×M×words temporary to 1 MB
    for i in range(0, len(pa), step):
        inter[i:i + step] = np.bitwise_count(pa[i:i + step, None] & pb[None]).sum(-1, dtype=np.uint32)
    area_a, area_b = np.bitwise_count(pa).sum(1, dtype=np.uint32), np.bitwise_count(pb).sum(1, dtype=np.uint32)
    union = area_a[:, None] + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def buffered(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes grown by ``scale`` × their width and height on every side (C-BIoU's buffer)."""
    return boxes + scale * (boxes[:, 2:] - boxes[:, :2]) @ _GROW


def similarity(det_boxes: np.ndarray, trk_boxes: np.ndarray, det_classes: np.ndarray, trk_classes: np.ndarray,
               mask_sim: np.ndarray | None = None, mask_weight: float = 0.5) -> np.ndarray:
    """N×M: ``w·maskIoU + (1−w)·boxIoU`` where a mask IoU is given, box IoU alone elsewhere,
    and ``-1`` (never matched) across classes.

    ``trk_boxes`` should be the tracks' *predicted* boxes. ``mask_sim`` may hold NaN for
    pairs without masks (e.g. a track born in a frame without them); those use box IoU.
    """
    sim = box_iou(det_boxes, trk_boxes)
    if mask_sim is not None and mask_weight > 0:
        mixed = mask_weight * mask_sim + (1 - mask_weight) * sim
        sim = np.where(np.isnan(mixed), sim, mixed)
    sim[det_classes[:, None] != trk_classes[None, :]] = _GATED
    return sim


def buffered_iou(det_boxes: np.ndarray, trk_boxes: np.ndarray, det_classes: np.ndarray, trk_classes: np.ndarray,
                 scale: float) -> np.ndarray:
    """N×M box IoU with every box first grown by ``scale`` × its width and height on each side
    (C-BIoU's buffered IoU: it still sees a track whose prediction has drifted off its
    object), ``-1`` across classes."""
    sim = box_iou(buffered(det_boxes, scale), buffered(trk_boxes, scale))
    sim[det_classes[:, None] != trk_classes[None, :]] = _GATED
    return sim


def assign(sim: np.ndarray, gate: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns matched by maximum total similarity, among pairs with ``sim >= gate``.

    ``gate`` is a number or one per column (a lost track may take a looser gate; ``inf``
    leaves a column out). The most pairs that pass the gate are matched first (gated pairs
    cost more than any valid set), then the most similar; a gated pair is never returned.
    """
    n, m = sim.shape
    if n == 0 or m == 0:
        return _EMPTY, _EMPTY
    valid = sim >= gate
    if n == 1 or m == 1:  # one row or column: the best valid pair is the optimum, no solver needed
        k = int(np.where(valid, sim, -np.inf).argmax())
        if not valid.flat[k]:
            return _EMPTY, _EMPTY
        return (_ZERO, np.array([k], np.intp)) if n == 1 else (np.array([k], np.intp), _ZERO)
    if not valid.any():
        return _EMPTY, _EMPTY
    rows, cols = linear_sum_assignment(np.where(valid, 1.0 - sim, 1e6))
    ok = valid[rows, cols]
    return rows[ok], cols[ok]


@dataclass(frozen=True)
class BoxGrid:
    """Where boxes land on the mask grid: ``cell = scale · box coordinate + offset`` per axis,
    cells spanning [i, i+1). The identity when boxes are given in mask-grid coordinates."""

    sx: float = 1.0
    sy: float = 1.0
    ox: float = 0.0
    oy: float = 0.0

    @classmethod
    def from_placement(cls, placement: Placement, mask_shape: tuple[int, int]) -> BoxGrid:
        """Frame-pixel boxes → the prototype grid of masks ``mask_shape`` over the network input."""
        (fh, fw), (ih, iw), (rh, rw) = placement.frame_size, placement.input_size, placement.resized
        gy, gx = mask_shape[0] / ih, mask_shape[1] / iw
        return cls(rw / fw * gx, rh / fh * gy, placement.left * gx, placement.top * gy)

    def apply(self, boxes: np.ndarray) -> np.ndarray:
        return boxes * (self.sx, self.sy, self.sx, self.sy) + (self.ox, self.oy, self.ox, self.oy)

    def check(self, boxes: np.ndarray, shape: tuple[int, int]) -> None:
        """Refuse boxes that land far off an h×w mask grid: a missing or wrong grid would
        otherwise quietly move every mask to the wrong place."""
        if not len(boxes):
            return
        cells, (h, w) = self.apply(boxes), shape
        if (cells[:, 2].max() > 1.5 * w + 2 or cells[:, 3].max() > 1.5 * h + 2
                or cells[:, 0].min() < -0.5 * w - 2 or cells[:, 1].min() < -0.5 * h - 2):
            raise ConfigError(f"boxes such as {boxes[0].tolist()} fall outside the {w}×{h} mask grid: "
                              f"give the tracker grid=BoxGrid(...), mapping box coordinates to mask cells")


def move_mask(mask: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """uint8 h×w ``mask`` of an object whose box (grid coordinates) moves from ``src`` to ``dst``:
    the same mask scaled and translated with its box (bilinear), zero where it enters.

    Only a window around ``dst`` is computed (masks are cut near their box), which makes it
    several times cheaper than warping the whole grid. Returned as it is (not copied) when the
    move is under a tenth of a cell.
    """
    (sx0, sy0, sx1, sy1), (dx0, dy0, dx1, dy1) = src, dst
    if sx1 - sx0 <= 1e-6 or sy1 - sy0 <= 1e-6:
        return mask
    kx, ky = (dx1 - dx0) / (sx1 - sx0), (dy1 - dy0) / (sy1 - sy0)
    # Cell edges map as u' = k·u + t; warpAffine works on cell centres (u − ½).
    tx, ty = dx0 - kx * sx0 + 0.5 * (kx - 1), dy0 - ky * sy0 + 0.5 * (ky - 1)
    h, w = mask.shape
    if abs(tx) < 0.1 and abs(ty) < 0.1 and abs(kx - 1) * w < 0.1 and abs(ky - 1) * h < 0.1:
        return mask
    mx, my = 2 + 0.25 * (dx1 - dx0), 2 + 0.25 * (dy1 - dy0)
    x0, x1 = max(int(dx0 - mx), 0), min(int(dx1 + mx) + 1, w)
    y0, y1 = max(int(dy0 - my), 0), min(int(dy1 + my) + 1, h)
    out = np.zeros_like(mask)
    if x1 > x0 and y1 > y0:
        warp = np.array([[kx, 0.0, tx - x0], [0.0, ky, ty - y0]])
        out[y0:y1, x0:x1] = cv2.warpAffine(mask, warp, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out
