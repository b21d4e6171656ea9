"""NMS as a static-shape graph op: torch, ONNX Runtime and OpenCV agree."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from segengine.graph.nms import TRANSLATIONS, nms_mask


class _Nms(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return nms_mask(boxes, scores, 0.45, 0.25)


def _boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 90 + 4
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def _opencv(boxes: torch.Tensor, scores: torch.Tensor) -> np.ndarray:
    b = boxes.numpy().astype(float)
    rects = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in b]
    kept = cv2.dnn.NMSBoxes(rects, scores.numpy().astype(float).tolist(), 0.25, 0.45)
    mask = np.zeros(len(b), np.float32)
    mask[np.asarray(kept, int).reshape(-1)] = 1
    return mask


def test_torch_and_onnx_match_opencv(tmp_path: Path) -> None:
    path = tmp_path / "nms.onnx"
    boxes, scores = _boxes(400, 0)
    torch.onnx.export(_Nms().eval(), (boxes, scores), str(path), dynamo=True, external_data=False,
                      input_names=["boxes", "scores"], custom_translation_table=TRANSLATIONS)
    session = ort.InferenceSession(str(path))
    for seed in range(5):
        boxes, scores = _boxes(400, seed)
        expected = _opencv(boxes, scores)
        assert 0 < expected.sum() < 400
        np.testing.assert_array_equal(_Nms()(boxes, scores).numpy(), expected)
        onnx_out = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})[0]
        np.testing.assert_array_equal(onnx_out, expected)


def test_nothing_above_threshold_keeps_nothing() -> None:
    boxes, scores = _boxes(10, 1)
    assert _Nms()(boxes, scores * 0.1).sum() == 0
