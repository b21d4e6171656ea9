"""The NMS the graph had before issue 12, kept as the reference the new one must equal.

Once engine/graph/nms.py: ONNX NonMaxSuppression with class offsets (boxes + class * 7680).

``keep = nms_mask(boxes, scores, iou, score_threshold)`` returns a 0/1 float mask over the
candidates, so the graph around it stays static (TensorRT and ONNX Runtime both like
that). In torch it runs a greedy NMS; in ONNX it becomes the standard
``NonMaxSuppression`` op followed by a scatter, which both runtimes implement natively.
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op


@torch.library.custom_op("segengine_tests::nms_mask", mutates_args=())
def nms_mask(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float) -> torch.Tensor:
    """Greedy NMS over ``boxes`` (N×4 xyxy) by ``scores`` (N); 1.0 where a box is kept."""
    keep = torch.zeros_like(scores)
    order = torch.argsort(scores, descending=True)
    order = order[scores[order] > score_threshold]
    if order.numel() == 0:
        return keep
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-9)
    alive = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if alive[i]:
            alive[i + 1:] &= iou[i, i + 1:] <= iou_threshold
    keep[order[alive]] = 1.0
    return keep


@nms_mask.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float) -> torch.Tensor:
    return torch.empty_like(scores)


def _nms_mask_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    n = op.Shape(scores)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]),  # 1×N×4, corners
        op.Unsqueeze(scores, [0, 1]),  # 1×1×N
        op.Reshape(n, [1]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
        center_point_box=0,
    )
    index = op.Slice(selected, [2], [3], [1])  # column 2 = box index
    index = op.Reshape(index, [-1])
    ones = op.Expand(op.CastLike(1.0, scores), op.Shape(index))
    return op.ScatterElements(op.Mul(scores, op.CastLike(0.0, scores)), index, ones, axis=0)


TRANSLATIONS = {torch.ops.segengine_tests.nms_mask.default: _nms_mask_onnx}


MAX_WH = 7680.0  # the class offset the old decode added, larger than any box coordinate


def old_keep(boxes: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
             score_threshold: float) -> torch.Tensor:
    """The old decode's NMS call: class-offset boxes through one class-agnostic NMS."""
    return nms_mask(boxes + classes.unsqueeze(1).float() * MAX_WH, scores, iou_threshold, score_threshold)
