"""Greedy non-maximum suppression in plain ops with static shapes (Cluster-NMS).

The candidates come sorted by score (a TopK's output), so "ranked higher" is "comes first".
``keep = greedy_nms(boxes, classes, valid, iou)`` builds a dense K×K matrix of "i suppresses j"
(i first, same class, IoU > iou, i above the score threshold) and resolves it by the fixed-point
iteration ``keep = valid & ~(keep @ S > 0)`` (Zheng et al. 2020, Cluster-NMS). Why not ONNX's
NonMaxSuppression: its output's row count depends on the data, and TensorRT resolves that with
a device-to-host shape copy inside ``enqueueV3`` (no CUDA graph, a blocking ``submit``).

Exactness: the iteration's unique fixed point is greedy NMS (by induction over the ranking:
box j's value is fixed once every box before it is). Starting from all valid, odd iterates keep
a subset of greedy's boxes and even ones a superset; they meet once every chain of boxes that
suppress the next one down is resolved: at most 3 steps on every frame of the shared videos, 5
on random clusters (boxes all overlapping each other take 1). ``iterations`` fixes the count
(unrolled: a Loop could cost TensorRT its CUDA graph too), and an odd count errs on the side of
keeping fewer. Each step is a max over K×K products, not a MatMul: OpenVINO's bf16 mode runs a
MatMul in bf16 and, walking back from it, the IoU arithmetic too (8 bits of mantissa: decisions
changed on 4 of 221 frames); without one it keeps all of it in f32.

Half precision: no class offsets (other classes are masked out instead), and coordinates are
scaled by 2^-6 first. A power of two changes no bit of the float32 IoU, and it keeps areas
within FP16's range (a 640×640 box is 409,600 px², past FP16's 65,504; scaled: 100).
"""

from __future__ import annotations

import torch

ITERATIONS = 9
_SCALE = 2.0 ** -6


def suppression(boxes: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """(B×)K×K float 0/1: row i suppresses column j (i ranks higher, same class, IoU > threshold,
    i valid), per frame of a batch when the inputs have one. The IoU is computed as ONNX Runtime's
    NonMaxSuppression computes it, so the comparisons come out the same: intersection /
    (area_i + area_j - intersection) > threshold, never suppressing where the intersection is empty."""
    x1, y1, x2, y2 = (boxes * _SCALE).unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    # One coordinate at a time: K×1 against 1×K. Pairs of coordinates (K×1×2 against 1×K×2)
    # broadcast over an inner axis of 2, which ONNX Runtime runs ten times slower.
    w = (torch.minimum(_col(x2), _row(x2)) - torch.maximum(_col(x1), _row(x1))).clamp(min=0)
    h = (torch.minimum(_col(y2), _row(y2)) - torch.maximum(_col(y1), _row(y1))).clamp(min=0)
    inter = w * h
    # 0 / 0 (two empty boxes) is NaN, and NaN > threshold is false: no suppression, as in ORT.
    over = inter / (_col(area) + _row(area) - inter) > iou_threshold
    rank = torch.arange(boxes.shape[-2], device=boxes.device)
    ahead = rank[:, None] < rank[None, :]
    same = _col(classes) == _row(classes)
    return (over & same & ahead & _col(valid)).to(boxes.dtype)


def _col(t: torch.Tensor) -> torch.Tensor:
    """(B×)K → (B×)K×1: i's value, against every j."""
    return t.unsqueeze(-1)


def _row(t: torch.Tensor) -> torch.Tensor:
    """(B×)K → (B×)1×K: j's value, against every i."""
    return t.unsqueeze(-2)


def greedy_nms(boxes: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor, iou_threshold: float,
               iterations: int = ITERATIONS) -> torch.Tensor:
    """Greedy per-class NMS over candidates sorted by descending score: ``boxes`` K×4 xyxy,
    ``classes`` K, ``valid`` K bool (above the score threshold), or each with a batch axis first
    (every frame on its own). Returns (B×)K 0/1 in the boxes' dtype: 1 where a box is kept."""
    s = suppression(boxes, classes, valid, iou_threshold)
    alive = valid.to(boxes.dtype)
    keep = alive
    for _ in range(iterations):
        # "Some kept box suppresses it", as a max over 0/1 products: exact in any precision.
        keep = alive * ((s * keep.unsqueeze(-1)).amax(dim=-2) <= 0).to(boxes.dtype)
    return keep
