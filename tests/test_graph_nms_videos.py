"""The new NMS on real detections: every frame of the two shared videos, against the old graph.

YOLOv5s-seg runs (ONNX Runtime) on each frame up to its sorted candidates; the old NMS (class
offsets, NonMaxSuppression) gets the 1000 the graph used to keep, the new one the 300 it keeps
now. Both run on ONNX Runtime and OpenVINO fp32, and the new one in float16 too (torch's CPU
float16 kernels).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import pytest
import torch

from segengine.graph.compose import export_module, head_for
from segengine.graph.heads import InstanceHead
from segengine.graph.nms import greedy_nms, suppression
from segengine.models import zoo
from tests.test_graph_nms import CONF, IOU, K, _export, _iou, _New, _Old, _Runner

VIDEOS = ("udacity_lanelines_solidWhiteRight.mp4", "udacity_vehicledet_test_video.mp4")


class _Candidates(torch.nn.Module):
    """Frame → the decode's sorted candidates (scores, boxes, classes), as many as it was set to."""

    def __init__(self, head: InstanceHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pred = self.head.net(self.head.pre(frame))[0]
        conf, boxes, cls, _ = self.head.decode.candidates_of(pred)
        return boxes[0], cls[0], conf[0]  # the decode keeps the batch axis


def _frames_candidates(video: Path, dirs: zoo.WeightDirs, tmp: Path) -> list[tuple[np.ndarray, ...]]:
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    head = head_for("yolov5s-seg", frames[0].shape[:2], dirs)
    assert isinstance(head, InstanceHead)
    head.decode.candidates = 1000  # the old graph's count
    path = tmp / f"{video.stem}.onnx"
    export_module(_Candidates(head).eval(), (torch.from_numpy(frames[0])[None],), path, ("frame",),
                  ("boxes", "classes", "scores"))
    session = ort.InferenceSession(str(path))
    # astype: ONNX Runtime's int64 arrays carry numpy's "longlong" type, which OpenVINO refuses.
    return [tuple(a.astype(a.dtype.name) for a in session.run(None, {"frame": f[None]})) for f in frames]


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory) -> tuple[_Runner, _Runner]:
    d = tmp_path_factory.mktemp("nms")
    return _Runner(_export(_New(), d / "new.onnx")), _Runner(_export(_Old(), d / "old.onnx", k=1000))


@pytest.mark.parametrize("video", VIDEOS)
def test_every_frame_keeps_the_same_detections(video: str, shared: Path, dirs: zoo.WeightDirs,
                                               runners: tuple[_Runner, _Runner], tmp_path: Path) -> None:
    new, old = runners
    frames = _frames_candidates(shared / "data" / "videos" / video, dirs, tmp_path)
    kept = half_differs = 0
    for boxes, cls, scores in frames:
        assert (scores > CONF).sum() <= K  # at most 109 on these: the cut to 300 drops nothing
        want = old((boxes, cls, scores))
        assert want[K:].sum() == 0
        cut = (boxes[:K], cls[:K], scores[:K])
        np.testing.assert_array_equal(new(cut), want[:K])
        if new.ov is not None:
            np.testing.assert_array_equal(new(cut, "ov"), want[:K])
            np.testing.assert_array_equal(old((boxes, cls, scores), "ov"), want)
        half_differs += _float16_differs(old, boxes, cls, scores)
        kept += int(want.sum())
    assert kept > len(frames)  # cars on most frames
    assert half_differs <= 1  # frame 57 of solidWhiteRight: an IoU of 0.45056


def _float16_differs(old: _Runner, boxes: np.ndarray, cls: np.ndarray, scores: np.ndarray) -> bool:
    """The NMS in float16 against the old graph in fp32, given boxes float16 holds (an fp16
    engine's network hands over no others). A decision may differ only where fp32 and fp16 see
    an IoU on different sides of the threshold, which fp16's rounding (~5e-4 at 0.45) allows
    within 1e-3 of it."""
    b32 = torch.from_numpy(boxes.astype(np.float16).astype(np.float32))
    b, c, valid = b32[:K], torch.from_numpy(cls[:K]), torch.from_numpy(scores[:K] > CONF)
    got = greedy_nms(b.half(), c, valid, IOU).float().numpy()
    if np.array_equal(got, old((b32.numpy(), cls, scores))[:K]):
        return False
    flipped = suppression(b, c, valid, IOU) != suppression(b.half(), c, valid, IOU).float()
    assert flipped.any() and ((_iou(b.double())[flipped] - IOU).abs() < 1e-3).all()
    return True
