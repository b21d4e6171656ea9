"""Our YOLOv5-seg reproduces upstream's output, in torch and as ONNX on onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segengine.models.yolov5_seg import CARD, YoloV5Seg, load_network

NC = 80
BOX, SCORES = slice(0, 4), slice(4, 5 + NC)  # then the 32 mask coefficients


@pytest.fixture(scope="module")
def net(shared: Path) -> torch.nn.Module:
    return load_network(shared / "models" / CARD.filename)


@pytest.fixture(scope="module")
def reference(shared: Path) -> dict[str, np.ndarray]:
    with np.load(shared / "reference" / "yolov5s_seg_test3.npz") as z:
        return {k: z[k].astype(np.float32) for k in ("input", "output0", "output1")}


def _export(net: torch.nn.Module, hw: tuple[int, int], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, *hw),), str(path), dynamo=True, external_data=False,
                          input_names=["input"], output_names=["output0", "output1"], verbose=False)
    return path


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output0", "output1"], {"input": x})


@pytest.fixture(scope="module")
def onnx_640(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(net, CARD.input_size, tmp_path_factory.mktemp("onnx") / "yolov5s-seg-640.onnx")


def assert_matches(out0: np.ndarray, out1: np.ndarray, ref0: np.ndarray, ref1: np.ndarray, tol: float = 1e-2) -> None:
    """Agreement relative to each part's scale (the reference is stored as float16)."""
    assert out0.shape == ref0.shape and out1.shape == ref1.shape
    box_err = np.abs(out0[..., BOX] - ref0[..., BOX]).max() / 640
    score_err = np.abs(out0[..., SCORES] - ref0[..., SCORES]).max()
    coef_err = np.abs(out0[..., 5 + NC :] - ref0[..., 5 + NC :]).max() / np.abs(ref0[..., 5 + NC :]).max()
    proto_err = np.abs(out1 - ref1).max() / np.abs(ref1).max()
    assert max(box_err, score_err, coef_err, proto_err) < tol, (box_err, score_err, coef_err, proto_err)


def test_card(shared: Path, net: torch.nn.Module) -> None:
    refs = json.loads((shared / "reference" / "references.json").read_text())
    assert CARD.classes == tuple(refs["yolov5s_seg"]["names"])
    assert tuple(net.names) == CARD.classes
    assert CARD.input_size == (640, 640) and CARD.preprocess.resize == "letterbox"
    assert net.stride == (8.0, 16.0, 32.0)


def test_upstream_details(net: torch.nn.Module) -> None:
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    assert all(not m.training for m in net.modules())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == 7_621_277  # upstream: 7.6 M


def test_torch_matches_reference(net: torch.nn.Module, reference: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        out0, out1 = net(torch.from_numpy(reference["input"]))
    assert_matches(out0.numpy(), out1.numpy(), reference["output0"], reference["output1"])
    # the strongest detections agree on what they are
    top = np.argsort(-reference["output0"][0, :, 4])[:20]
    assert (out0.numpy()[0, top, 5 : 5 + NC].argmax(1) == reference["output0"][0, top, 5 : 5 + NC].argmax(1)).all()


def test_onnx_on_onnxruntime_matches_reference(onnx_640: Path, reference: dict[str, np.ndarray]) -> None:
    out0, out1 = _ort(onnx_640, reference["input"])
    assert_matches(out0, out1, reference["output0"], reference["output1"])


def test_non_square_input(net: torch.nn.Module, reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    x = np.ascontiguousarray(reference["input"][:, :, 128:512])  # the 16:9 letterbox, 384 x 640
    anchors = 3 * (48 * 80 + 24 * 40 + 12 * 20)
    with torch.no_grad():
        t0, t1 = (t.numpy() for t in net(torch.from_numpy(x)))
    assert t0.shape == (1, anchors, 117) and t1.shape == (1, 32, 96, 160)
    o0, o1 = _ort(_export(net, (384, 640), tmp_path / "yolov5s-seg-384.onnx"), x)
    assert o0.shape == t0.shape and o1.shape == t1.shape
    assert_matches(o0, o1, t0, t1, tol=1e-4)
    # boxes lie in the 384 x 640 input: centres of confident ones inside it
    conf = t0[0, :, 4] > 0.5
    assert conf.any()
    assert (t0[0, conf, 0] < 640).all() and (t0[0, conf, 1] < 384).all()


def test_input_size_must_be_a_multiple_of_32(net: torch.nn.Module) -> None:
    from segengine.errors import ConfigError

    with pytest.raises(ConfigError, match="multiples of 32"):
        net(torch.zeros(1, 3, 360, 640))


@pytest.fixture(scope="module")
def arch(shared: Path) -> dict:
    from segengine.models.safe_pickle import read_yolo_checkpoint

    return read_yolo_checkpoint(shared / "models" / CARD.filename).yaml


@pytest.mark.parametrize(
    ("depth", "width", "params", "first"),
    [(0.33, 0.25, 2_000_000, 16), (0.67, 0.75, 22_000_000, 48)],
    ids=["n", "m"],
)
def test_other_sizes_build_from_yaml(arch: dict, depth: float, width: float, params: int, first: int) -> None:
    net = YoloV5Seg(dict(arch, depth_multiple=depth, width_multiple=width))
    assert net.model[0].conv.weight.shape == (first, 3, 6, 6)
    assert net.stride == (8.0, 16.0, 32.0)
    assert abs(sum(p.numel() for p in net.parameters()) - params) / params < 0.01  # upstream: n 2.0 M, m 22.0 M
