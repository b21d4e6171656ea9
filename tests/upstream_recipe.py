"""Upstream's own inference recipes, written out independently of our graph, for cross-checks.

Pre-processing follows references.json (OpenCV); post-processing follows upstream's scripts:
argmax for the semantic models, YOLOv5's non_max_suppression + process_mask (upsample,
threshold) + scale_image for the instance model. NMS here is OpenCV's.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segengine.models.card import ModelCard


def predict_classes(model: str, net: torch.nn.Module, card: ModelCard, bgr: np.ndarray) -> dict[str, np.ndarray]:
    """{class name: bool mask at the image's size}."""
    h, w = bgr.shape[:2]
    if card.task in ("lanes+drivable", "semantic"):
        ih, iw = card.input_size
        rgb = cv2.cvtColor(cv2.resize(bgr, (iw, ih), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = (rgb.astype(np.float32) / 255 - card.preprocess.mean) / card.preprocess.std
        outputs = net(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))
        maps = [o.argmax(1)[0].numpy().astype(np.uint8) for o in outputs]
        maps = [cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in maps]
        if card.task == "lanes+drivable":
            return {"drivable": maps[0] == 1, "lane": maps[1] == 1}
        return {name: maps[0] == i for i, name in enumerate(card.classes)}
    return _yolo(net, card, bgr)


def _letterbox(bgr: np.ndarray, size: int = 640, stride: int = 32) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    dw, dh = ((size - nw) % stride) / 2, ((size - nh) % stride) / 2  # upstream's auto=True minimum rectangle
    if (nw, nh) != (w, h):
        bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return padded, (top, left, nh, nw)


def _yolo(net: torch.nn.Module, card: ModelCard, bgr: np.ndarray, conf: float = 0.25, iou: float = 0.45
          ) -> dict[str, np.ndarray]:
    h, w = bgr.shape[:2]
    boxed, (top, left, nh, nw) = _letterbox(bgr)
    ih, iw = boxed.shape[:2]
    x = torch.from_numpy(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255)
    pred, proto = net(x)
    p = pred[0].numpy()
    nc = len(card.classes)
    p = p[p[:, 4] > conf]
    scores_all = p[:, 5:5 + nc] * p[:, 4:5]
    cls = scores_all.argmax(1)
    score = scores_all.max(1)
    p, cls, score = p[score > conf], cls[score > conf], score[score > conf]
    xyxy = np.concatenate([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], 1)
    shifted = xyxy + cls[:, None] * 7680.0
    rects = [(a, b, c - a, d - b) for a, b, c, d in shifted.astype(float)]
    keep = np.asarray(cv2.dnn.NMSBoxes(rects, score.astype(float).tolist(), conf, iou), int).reshape(-1)[:300]
    result: dict[str, np.ndarray] = {}
    if len(keep) == 0:
        return result
    c, mh, mw = proto.shape[1:]
    coeffs = torch.from_numpy(p[keep, 5 + nc:])
    masks = torch.sigmoid(coeffs @ proto[0].reshape(c, -1)).reshape(-1, mh, mw)
    boxes = torch.from_numpy(xyxy[keep]) * torch.tensor([mw / iw, mh / ih, mw / iw, mh / ih])
    cols = torch.arange(mw).view(1, 1, -1)
    rows = torch.arange(mh).view(1, -1, 1)
    b = boxes[:, :, None]
    masks = masks * ((cols >= b[:, 0:1]) & (cols < b[:, 2:3]) & (rows >= b[:, 1:2]) & (rows < b[:, 3:4]))
    masks = (F.interpolate(masks[None], (ih, iw), mode="bilinear", align_corners=False)[0] > 0.5).float().numpy()
    for k, idx in enumerate(keep):
        m = masks[k][top:top + nh, left:left + nw]
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5  # upstream's scale_image
        name = card.classes[cls[idx]]
        result[name] = result.get(name, np.zeros((h, w), bool)) | m
    return result
