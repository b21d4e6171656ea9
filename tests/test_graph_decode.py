"""In-graph instance decoding: the cheaper formulation gives what the plain one gave, bit for bit."""

from __future__ import annotations

import torch

from segengine.geometry import letterbox
from segengine.graph.heads import class_map
from segengine.graph.instances import InstanceDecode
from tests.nms_reference import old_keep


def _plain(d: InstanceDecode, pred: torch.Tensor, protos: torch.Tensor,
           candidates: int | None = None) -> tuple[torch.Tensor, ...]:
    """The decode as it was written first: every candidate's class scores, boxes and masks in full,
    and the old NMS (class offsets, NonMaxSuppression in ONNX)."""
    p = pred[0]
    cls_scores = p[:, 4:5] * p[:, 5:5 + d.nc]
    coeffs = p[:, 5 + d.nc:]
    conf, cls = cls_scores.max(dim=1)
    boxes = torch.cat([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], dim=1)
    conf, idx = conf.topk(min(candidates or d.candidates, conf.shape[0]))
    boxes, cls, coeffs = boxes[idx], cls[idx], coeffs[idx]
    keep = old_keep(boxes, cls, conf, d.iou, d.conf)
    scores, idx = (conf * keep).topk(d.top_k)
    valid = scores > 0
    boxes, coeffs = boxes[idx], coeffs[idx]
    classes = torch.where(valid, cls[idx], torch.full_like(cls[idx], -1))
    c, mh, mw = protos[0].shape
    masks = torch.sigmoid(coeffs @ protos[0].reshape(c, mh * mw)).reshape(-1, mh, mw)
    ih, iw = d.placement.input_size
    b = (boxes * torch.tensor([mw / iw, mh / ih, mw / iw, mh / ih])).unsqueeze(-1)
    cols = torch.arange(mw, dtype=boxes.dtype).view(1, 1, mw)
    rows = torch.arange(mh, dtype=boxes.dtype).view(1, mh, 1)
    inside = (cols >= b[:, 0:1]) & (cols < b[:, 2:3]) & (rows >= b[:, 1:2]) & (rows < b[:, 3:4])
    masks = ((masks * inside.float() * valid.view(-1, 1, 1).float()) * 255.0).round().to(torch.uint8)
    return (d._to_frame(boxes).unsqueeze(0) * valid.view(1, -1, 1).float(), scores.unsqueeze(0),
            classes.unsqueeze(0), masks.unsqueeze(0))


def _yolo(n: int, nc: int, seed: int, hot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random v5 rows for a 640×384 input; ``hot`` of them confident."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([640.0, 384.0])
    wh = torch.rand(n, 2, generator=g) * 120 + 8
    obj = torch.rand(n, 1, generator=g) * 0.3
    obj[torch.randperm(n, generator=g)[:hot]] = 0.95
    cls = torch.rand(n, nc, generator=g)
    coeffs = torch.randn(n, 32, generator=g)
    protos = torch.randn(1, 32, 96, 160, generator=g)
    return torch.cat([xy, wh, obj, cls, coeffs], 1)[None], protos


def test_decode_equals_the_plain_formulation() -> None:
    d = InstanceDecode(letterbox((540, 960)), 80)
    for seed, hot in ((0, 40), (1, 3000), (2, 0)):  # a few, more than the candidates, none
        pred, protos = _yolo(15120, 80, seed, hot)
        got, want = d(pred, protos), _plain(d, pred, protos)
        assert (want[1] > 0).sum() > 0 or hot == 0
        for name, a, b in zip(("boxes", "scores", "classes", "masks"), got, want):
            assert torch.equal(a, b), name


def test_300_candidates_give_what_1000_gave_until_300_pass_the_threshold() -> None:
    """K = 300 (was 1000): boxes ranked past 300 score below every box before them, so they could
    only reach the top_k output when fewer than top_k of the first 300 survive NMS."""
    d = InstanceDecode(letterbox((540, 960)), 80)
    for seed, hot in ((3, 60), (4, 250)):
        pred, protos = _yolo(15120, 80, seed, hot)
        pred[0, :, 4] = pred[0, :, 4].clamp(max=0.2)  # only the hot ones pass 0.25
        pred[0, torch.randperm(15120, generator=torch.Generator().manual_seed(seed))[:hot], 4] = 0.95
        got, want = d(pred, protos), _plain(d, pred, protos, candidates=1000)
        for name, a, b in zip(("boxes", "scores", "classes", "masks"), got, want):
            assert torch.equal(a, b), name
    pred, protos = _yolo(15120, 80, 5, 3000)  # 4913 pass, and 100 of the first 300 survive
    assert all(torch.equal(a, b) for a, b in zip(d(pred, protos), _plain(d, pred, protos, candidates=1000)))
    # Where the cut shows: 400 duplicates of one car outrank 50 other cars.
    pred = torch.zeros(1, 15120, 5 + 80 + 32)
    pred[0, :, :4] = torch.tensor([320.0, 192.0, 20.0, 20.0])
    pred[0, :450, 5] = 1.0
    pred[0, :400, 4] = torch.linspace(0.99, 0.6, 400)
    pred[0, 400:450, 0], pred[0, 400:450, 1] = torch.arange(50) * 12.0 + 16, 40.0  # in a row above
    pred[0, 400:450, 4] = 0.5
    assert (d(pred, protos)[1] > 0).sum() == 1
    assert (_plain(d, pred, protos, candidates=1000)[1] > 0).sum() == 51


def test_every_detection_above_the_threshold_is_kept() -> None:
    """Well-apart boxes, confident, scattered among 15120 weak candidates: each one comes out."""
    n, nc, k = 15120, 80, 60
    pred = torch.zeros(1, n, 5 + nc + 32)
    pred[0, :, :4] = torch.tensor([320.0, 192.0, 10.0, 10.0])
    pred[0, :, 4], pred[0, :, 5] = 0.2, 0.2  # 0.04 < the 0.25 threshold
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(5))[:k]
    centres = torch.stack(torch.meshgrid(torch.arange(10) * 64 + 32.0, torch.arange(6) * 64 + 32.0,
                                         indexing="ij"), -1).reshape(-1, 2)
    pred[0, rows, :2], pred[0, rows, 2:4] = centres, 40.0
    pred[0, rows, 4] = torch.linspace(0.3, 0.99, k)
    pred[0, rows, 5 + rows % nc] = 1.0
    scores, classes = InstanceDecode(letterbox((384, 640)), nc)(pred, torch.zeros(1, 32, 96, 160))[1:3]
    assert (scores[0] > 0).sum() == k
    assert sorted(scores[0][:k].tolist()) == sorted(pred[0, rows, 4].tolist())
    assert sorted(classes[0][:k].tolist()) == sorted((rows % nc).tolist())


def test_two_class_map_is_argmax_ties_included() -> None:
    x = torch.randint(-2, 3, (2, 2, 7, 9)).float()  # many ties
    assert torch.equal(class_map(x), x.argmax(dim=1).to(torch.uint8))
    y = torch.randn(1, 5, 4, 4)
    assert torch.equal(class_map(y), y.argmax(dim=1).to(torch.uint8))
