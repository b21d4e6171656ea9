"""`segengine eval` on the labelled CamVid frames, checked against upstream's own recipe.

The recipe path does what upstream's scripts do, independently of our graph: OpenCV
pre-processing as in references.json, the bare network, upstream's post-processing
(argmax, or YOLOv5's NMS and mask assembly), then the prediction resized to the label.
Our graph must reach the same IoU: any gap is a pre- or post-processing bug.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segengine.errors import ConfigError
from segengine.evaluate import CAMVID_CLASSES, CAMVID_VOID, DEFAULT_MAPPING, evaluate, pairs
from segengine.models import zoo
from tests.upstream_recipe import predict_classes


def _recipe_iou(model: str, data: list[tuple[Path, Path]], dirs: zoo.WeightDirs) -> dict[str, float]:
    card = zoo.card(model)
    net = zoo.load(model, dirs=dirs)
    inter: dict[str, int] = {}
    union: dict[str, int] = {}
    for image_path, label_path in data:
        bgr = cv2.imread(str(image_path))
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        with torch.no_grad():
            predicted = predict_classes(model, net, card, bgr)
        valid = label != CAMVID_VOID
        for target, sources in DEFAULT_MAPPING[model].items():
            pred = np.zeros(label.shape, bool)
            for cls in sources:
                pred |= predicted.get(cls, np.zeros(label.shape, bool))
            truth = label == CAMVID_CLASSES.index(target)
            inter[target] = inter.get(target, 0) + int((pred & truth & valid).sum())
            union[target] = union.get(target, 0) + int(((pred | truth) & valid).sum())
    return {t: inter[t] / union[t] for t in inter}


@pytest.mark.parametrize("model", ["twinlitenet", "espnetv2-cityscapes", "yolov5s-seg"])
def test_graph_matches_upstream_recipe(model: str, shared: Path, dirs: zoo.WeightDirs) -> None:
    camvid = shared / "data" / "camvid12"
    data = pairs(camvid / "images", camvid / "annot")
    report = evaluate(model, camvid / "images", camvid / "annot", dirs=dirs, progress=False)
    ours = {s.label: s.iou for s in report.scores}
    assert set(ours) == set(DEFAULT_MAPPING[model])
    assert report.mean_iou(model) > 0.5  # real predictions, not an empty map
    for label, iou in _recipe_iou(model, data, dirs).items():
        assert abs(ours[label] - iou) < 0.002, (label, ours[label], iou)


def test_cli_prints_table(shared: Path, dirs: zoo.WeightDirs, tmp_path: Path) -> None:
    camvid = shared / "data" / "camvid12"
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"twinlitenet": {"Road": ["drivable"]}}))
    out = subprocess.run(
        [sys.executable, "-m", "segengine.cli", "eval", "twinlitenet", "--images", str(camvid / "images"),
         "--labels", str(camvid / "annot"), "--mapping", str(mapping), "--model-dir", str(dirs.mirror)],
        capture_output=True, text=True, timeout=300, env={**_env(dirs)},
    )
    assert out.returncode == 0, out.stderr
    assert "twinlitenet            Road" in out.stdout and "(12 images)" in out.stdout


def test_bad_inputs_are_clear_errors(shared: Path, tmp_path: Path, dirs: zoo.WeightDirs) -> None:
    camvid = shared / "data" / "camvid12"
    with pytest.raises(ConfigError, match="not a folder"):
        pairs(tmp_path / "nope", camvid / "annot")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="no label for x.png"):
        pairs(tmp_path, camvid / "annot")
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"twinlitenet": {"Road": ["runway"]}}))
    from segengine.evaluate import load_mapping

    with pytest.raises(ConfigError, match="runway not among its classes"):
        evaluate("twinlitenet", camvid / "images", camvid / "annot", mapping=load_mapping(bad), dirs=dirs,
                 progress=False)


def _env(dirs: zoo.WeightDirs) -> dict[str, str]:
    import os

    return {**os.environ, "SEGENGINE_CACHE_DIR": str(dirs.cache)}
