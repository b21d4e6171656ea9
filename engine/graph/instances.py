"""In-graph decoding of YOLO-seg outputs: thresholds, NMS to a fixed top-K, masks at prototype resolution.

Outputs have static shapes: K rows, padded with score 0 (class -1, empty mask) when fewer
instances are found. Boxes come back in frame pixels; masks stay at the prototypes'
resolution over the whole network input, as probabilities scaled to uint8 (threshold
at 128), so a device-to-host copy stays small.
"""

from __future__ import annotations

from typing import Literal

import torch

from segengine.geometry import Placement
from segengine.graph.nms import nms_mask

Layout = Literal["v5", "v8"]
MAX_WH = 7680.0  # class offset for batched NMS, larger than any box coordinate


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
        candidates: int = 1000,
    ) -> None:
        super().__init__()
        self.placement = placement
        self.nc = num_classes
        self.layout = layout
        self.top_k = top_k
        self.conf = conf_threshold
        self.iou = iou_threshold
        self.candidates = candidates

    def forward(self, pred: torch.Tensor, protos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = pred[0] if self.layout == "v5" else pred[0].transpose(0, 1)
        if self.layout == "v5":  # cx cy w h, objectness, classes, coefficients
            cls_scores = p[:, 4:5] * p[:, 5:5 + self.nc]
            coeffs = p[:, 5 + self.nc:]
        else:  # cx cy w h, classes, coefficients
            cls_scores = p[:, 4:4 + self.nc]
            coeffs = p[:, 4 + self.nc:]
        conf, cls = cls_scores.max(dim=1)
        boxes = torch.cat([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], dim=1)

        # Pre-select the best candidates so that NMS works on a bounded set.
        n = min(self.candidates, conf.shape[0])
        conf, idx = conf.topk(n)
        boxes, cls, coeffs = boxes[idx], cls[idx], coeffs[idx]
        offset = cls.unsqueeze(1).float() * MAX_WH  # class-aware NMS in one call
        keep = nms_mask(boxes + offset, conf, self.iou, self.conf)

        scores, idx = (conf * keep).topk(self.top_k)
        valid = scores > 0
        boxes, coeffs = boxes[idx], coeffs[idx]
        classes = torch.where(valid, cls[idx], torch.full_like(cls[idx], -1))
        masks = self._masks(coeffs, protos[0], boxes) * valid.view(-1, 1, 1).float()
        masks = (masks * 255.0).round().to(torch.uint8)
        return (
            self._to_frame(boxes).unsqueeze(0) * valid.view(1, -1, 1).float(),
            scores.unsqueeze(0),
            classes.unsqueeze(0),
            masks.unsqueeze(0),
        )

    def _masks(self, coeffs: torch.Tensor, protos: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        c, mh, mw = protos.shape
        masks = torch.sigmoid(coeffs @ protos.reshape(c, mh * mw)).reshape(-1, mh, mw)
        ih, iw = self.placement.input_size
        scale = torch.tensor([mw / iw, mh / ih, mw / iw, mh / ih], dtype=boxes.dtype)
        b = (boxes * scale).unsqueeze(-1)  # K×4×1
        cols = torch.arange(mw, dtype=boxes.dtype).view(1, 1, mw)
        rows = torch.arange(mh, dtype=boxes.dtype).view(1, mh, 1)
        inside = (cols >= b[:, 0:1]) & (cols < b[:, 2:3]) & (rows >= b[:, 1:2]) & (rows < b[:, 3:4])
        return masks * inside.float()

    def _to_frame(self, boxes: torch.Tensor) -> torch.Tensor:
        p = self.placement
        sx, sy = p.scale_xy
        h, w = p.frame_size
        shift = torch.tensor([p.left, p.top, p.left, p.top], dtype=boxes.dtype)
        scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype)
        return torch.minimum(((boxes - shift) / scale).clamp(min=0), limit)
