"""In-graph decoding of YOLO-seg outputs: thresholds, NMS to a fixed top-K, masks at prototype resolution.

Outputs have static shapes but for the batch axis: K rows per frame, padded with score 0
(class -1, empty mask) when fewer instances are found. Boxes come back in frame pixels; masks
stay at the prototypes' resolution over the whole network input, as probabilities scaled to
uint8 (threshold at 128), so a device-to-host copy stays small.
"""

from __future__ import annotations

from typing import Literal

import torch

from segengine.geometry import Placement
from segengine.graph.nms import ITERATIONS, greedy_nms

Layout = Literal["v5", "v8"]


class InstanceDecode(torch.nn.Module):
    def __init__(
        self,
        placement: Placement,
        num_classes: int,
        *,
        layout: Layout = "v5",
        top_k: int = 100,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        candidates: int = 300,
        nms_iterations: int = ITERATIONS,
    ) -> None:
        super().__init__()
        self.placement = placement
        self.nc = num_classes
        self.layout = layout
        self.top_k = top_k
        self.conf = conf_threshold
        self.iou = iou_threshold
        # NMS runs on a dense K×K matrix, so K costs K²: 1000 takes 7.0 ms a frame on ONNX
        # Runtime (2 cores), 300 takes 0.7. Real scenes here have at most 109 candidates above
        # the threshold; the answer changes only past 300 of them and fewer than top_k kept.
        self.candidates = max(candidates, top_k)
        self.nms_iterations = nms_iterations

    def forward(self, pred: torch.Tensor, protos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pred B×N×(5+nc+nm) (v5) or B×(4+nc+nm)×N (v8), protos B×nm×mh×mw → boxes B×K×4, scores
        B×K, classes B×K, masks B×K×mh×mw. Every op works along the rows (TopK and gathers on the
        last axes, batched MatMul), so a frame's outputs do not depend on the others in its batch."""
        conf, boxes, cls, coeffs = self.candidates_of(pred)
        keep = greedy_nms(boxes, cls, conf > self.conf, self.iou, self.nms_iterations)

        scores, idx = (conf * keep).topk(self.top_k, dim=-1)
        valid = scores > 0
        boxes, coeffs, cls = _rows(boxes, idx), _rows(coeffs, idx), cls.gather(1, idx)
        # chosen in float, then cast: OpenVINO's CPU plugin on AVX2-only CPUs (seen on an AMD EPYC, OpenVINO 2026.4)
        # gives the int64 where's -1 for every row, valid ones too; class ids are exact in float32
        classes = torch.where(valid, cls.float(), torch.full_like(scores, -1.0)).to(torch.int64)
        masks = self._masks(coeffs, protos, boxes, valid)
        return self._to_frame(boxes) * valid.unsqueeze(-1).float(), scores, classes, masks

    def candidates_of(self, pred: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The top candidates by score, sorted, per frame: scores B×n, boxes B×n×4 (xyxy, input px),
        classes B×n, coefficients B×n×nm."""
        # Only what ranks the candidates runs on all of them (15120 for a 640×384 input): the
        # best class score. Boxes, classes and coefficients are read for the selected ones.
        conf = self._confidence(pred)
        n = min(self.candidates, conf.shape[-1])
        conf, idx = conf.topk(n, dim=-1)
        if self.layout == "v5":  # cx cy w h, objectness, classes, coefficients
            rows = _rows(pred, idx)
            cls = (rows[..., 4:5] * rows[..., 5:5 + self.nc]).argmax(dim=-1)
            coeffs = rows[..., 5 + self.nc:]
        else:  # cx cy w h, classes, coefficients; gathered channels first: only the chosen columns move
            rows = pred.gather(2, idx.unsqueeze(1).expand(-1, pred.shape[1], -1)).transpose(1, 2)
            cls = rows[..., 4:4 + self.nc].argmax(dim=-1)
            coeffs = rows[..., 4 + self.nc:]
        boxes = torch.cat([rows[..., :2] - rows[..., 2:4] / 2, rows[..., :2] + rows[..., 2:4] / 2], dim=-1)
        return conf, boxes, cls, coeffs

    def _confidence(self, p: torch.Tensor) -> torch.Tensor:
        """Each candidate's best class score, B×N. v5: objectness × the best class probability, equal
        to the best of the products (objectness is a probability, never negative, and rounding is
        monotonic) at 1/80 of the multiplies."""
        if self.layout == "v5":
            return p[..., 4] * p[..., 5:5 + self.nc].amax(dim=-1)
        return p[:, 4:4 + self.nc].amax(dim=1)  # channels first

    def _masks(self, coeffs: torch.Tensor, protos: torch.Tensor, boxes: torch.Tensor,
               valid: torch.Tensor) -> torch.Tensor:
        """uint8 B×K×mh×mw: probabilities ×255 inside each valid row's box, 0 elsewhere."""
        c, mh, mw = protos.shape[1:]
        k = coeffs.shape[1]
        masks = torch.sigmoid(torch.bmm(coeffs, protos.reshape(-1, c, mh * mw))).reshape(-1, k, mh, mw)
        ih, iw = self.placement.input_size
        scale = torch.tensor([mw / iw, mh / ih, mw / iw, mh / ih], dtype=boxes.dtype)
        b = (boxes * scale).unsqueeze(-1)  # B×K×4×1
        cols = torch.arange(mw, dtype=boxes.dtype).view(1, 1, 1, mw)
        rows = torch.arange(mh, dtype=boxes.dtype).view(1, 1, mh, 1)
        # The box as a column factor (B×K×1×mw, carrying validity and the ×255) times a row
        # factor (B×K×mh×1): one full-size multiply each, where comparing full-size took four.
        # Factors are 0, 1 or 255, so the products round exactly as sigmoid × 255 alone.
        gain = valid.float()[..., None, None] * 255.0
        in_cols = ((cols >= b[:, :, 0:1]) & (cols < b[:, :, 2:3])).float() * gain
        in_rows = ((rows >= b[:, :, 1:2]) & (rows < b[:, :, 3:4])).float()
        return (masks * in_cols * in_rows).round().to(torch.uint8)

    def _to_frame(self, boxes: torch.Tensor) -> torch.Tensor:
        p = self.placement
        sx, sy = p.scale_xy
        h, w = p.frame_size
        shift = torch.tensor([p.left, p.top, p.left, p.top], dtype=boxes.dtype)
        scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype)
        return torch.minimum(((boxes - shift) / scale).clamp(min=0), limit)


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """B×N×C, B×n indices → B×n×C: each frame's chosen rows (one GatherElements, no loop over frames)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
