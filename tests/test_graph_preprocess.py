"""The in-graph pre-processing reproduces upstream's cv2 recipes (references.json) on the real images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from segengine.geometry import letterbox, stretch
from segengine.graph.preprocess import FramePreprocess, OpenCVLinearResize
from segengine.models.card import Preprocess

IMAGENET = Preprocess(resize="stretch", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _rgb(shared: Path, key: str) -> np.ndarray:
    refs = json.loads((shared / "reference" / "references.json").read_text())
    return cv2.cvtColor(cv2.imread(str(shared / refs[key]["image"])), cv2.COLOR_BGR2RGB)


def _run(module: FramePreprocess, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(image)[None]).numpy()


@pytest.mark.parametrize(
    ("key", "npz", "make", "recipe"),
    [
        ("twinlitenet", "twinlitenet_solidWhiteCurve.npz", lambda s: stretch(s, (360, 640)),
         Preprocess(resize="stretch")),
        ("espnetv2_cityscapes", "espnetv2_city_test1.npz", lambda s: stretch(s, (512, 1024)), IMAGENET),
        ("yolov5s_seg", "yolov5s_seg_test3.npz", lambda s: letterbox(s, canvas=(640, 640)),
         Preprocess(resize="letterbox")),
    ],
)
def test_matches_upstream_recipe(shared: Path, key, npz, make, recipe) -> None:
    image = _rgb(shared, key)
    expected = np.load(shared / "reference" / npz)["input"]
    got = _run(FramePreprocess(make(image.shape[:2]), recipe), image)
    assert got.shape == expected.shape
    # Bit-exact resize: what remains is float rounding in the normalisation.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(360, 480), (720, 1280), (541, 961), (37, 1000)])
@pytest.mark.parametrize("target", [(512, 1024), (384, 640), (360, 640), (217, 333), (1080, 1920)])
def test_resize_is_bit_exact_with_opencv(size: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size) + sum(target))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = cv2.resize(image, target[::-1], interpolation=cv2.INTER_LINEAR)
    got = OpenCVLinearResize(size, target)(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_resize_is_bit_exact_on_onnxruntime(tmp_path: Path, shared: Path) -> None:
    image = _rgb(shared, "yolov5s_seg")
    module = OpenCVLinearResize(image.shape[:2], (384, 640)).eval()
    path = tmp_path / "resize.onnx"
    torch.onnx.export(module, (torch.from_numpy(image)[None],), str(path), dynamo=True, external_data=False,
                      input_names=["frame"])
    got = ort.InferenceSession(str(path)).run(None, {"frame": image[None]})[0][0]
    np.testing.assert_array_equal(got, cv2.resize(image, (640, 384), interpolation=cv2.INTER_LINEAR))


def test_letterbox_placement() -> None:
    square = letterbox((720, 1280), canvas=(640, 640))
    assert (square.resized, square.top, square.left) == ((360, 640), 140, 0)
    wide = letterbox((540, 960))  # 16:9 → no compute spent on padding beyond the stride
    assert wide.input_size == (384, 640) and wide.resized == (360, 640) and wide.top == 12
    tall = letterbox((1080, 607))
    assert tall.input_size[0] == 640 and tall.input_size[1] % 32 == 0 and tall.left >= 0
