"""The in-graph pre-processing reproduces upstream's cv2 recipes (references.json) on the real images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.graph.preprocess import FramePreprocess, letterbox, stretch
from models.card import Preprocess

IMAGENET = Preprocess(resize="stretch", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _rgb(shared: Path, key: str) -> np.ndarray:
    refs = json.loads((shared / "reference" / "references.json").read_text())
    return cv2.cvtColor(cv2.imread(str(shared / refs[key]["image"])), cv2.COLOR_BGR2RGB)


def _run(module: FramePreprocess, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(image)[None]).numpy()


@pytest.mark.parametrize(
    ("key", "npz", "make", "recipe", "scale"),
    [
        ("twinlitenet", "twinlitenet_solidWhiteCurve.npz", lambda s: stretch(s, (360, 640)),
         Preprocess(resize="stretch"), 1 / 255),
        ("espnetv2_cityscapes", "espnetv2_city_test1.npz", lambda s: stretch(s, (512, 1024)), IMAGENET, 1 / (255 * 0.224)),
        ("yolov5s_seg", "yolov5s_seg_test3.npz", lambda s: letterbox(s, canvas=(640, 640)),
         Preprocess(resize="letterbox"), 1 / 255),
    ],
)
def test_matches_upstream_recipe(shared: Path, key, npz, make, recipe, scale) -> None:
    image = _rgb(shared, key)
    expected = np.load(shared / "reference" / npz)["input"]
    got = _run(FramePreprocess(make(image.shape[:2]), recipe), image)
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    # OpenCV resizes in fixed point; a value may differ by one grey level, rarely by two.
    assert diff.max() <= 2.01 * scale
    assert (diff > 1.01 * scale).mean() < 1e-3


def test_letterbox_placement() -> None:
    square = letterbox((720, 1280), canvas=(640, 640))
    assert (square.resized, square.top, square.left) == ((360, 640), 140, 0)
    wide = letterbox((540, 960))  # 16:9 → no compute spent on padding beyond the stride
    assert wide.input_size == (384, 640) and wide.resized == (360, 640) and wide.top == 12
    tall = letterbox((1080, 607))
    assert tall.input_size[0] == 640 and tall.input_size[1] % 32 == 0 and tall.left >= 0
