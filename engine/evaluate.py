"""Semantic-segmentation evaluation against per-pixel label images (CamVid-style ids).

Every model is run through the engine's own graph, so the numbers measure what users get,
pre- and post-processing included. Instance models are scored by merging their masks per
class. IoU is accumulated over the whole set (intersection and union summed over images).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.errors import ConfigError
from segengine.graph.compose import build_graph, export_graph
from segengine.geometry import Placement
from segengine.graph.readout import map_to_frame, masks_to_frame
from segengine.models import zoo

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                  "Car", "Pedestrian", "Bicyclist")
CAMVID_VOID = 11
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# model → CamVid class → the model's classes that count as it.
DEFAULT_MAPPING: dict[str, dict[str, list[str]]] = {
    "twinlitenet": {"Road": ["drivable"]},
    "yolov5s-seg": {"Car": ["car", "truck", "bus"], "Pedestrian": ["person"]},
    "espnetv2-cityscapes": {
        "Road": ["road"], "Pavement": ["sidewalk"], "Building": ["building", "wall"],
        "Car": ["car", "truck", "bus", "train"], "Pedestrian": ["person"], "Sky": ["sky"],
        "Tree": ["vegetation", "terrain"],
    },
}


@dataclass
class ClassScore:
    model: str
    label: str
    intersection: int = 0
    union: int = 0

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else float("nan")


@dataclass
class Report:
    images: int
    scores: list[ClassScore] = field(default_factory=list)

    def mean_iou(self, model: str) -> float:
        values = [s.iou for s in self.scores if s.model == model and s.union]
        return float(np.mean(values)) if values else float("nan")

    def table(self) -> str:
        lines = [f"{'model':<22} {'class':<12} {'IoU':>6}"]
        for model in dict.fromkeys(s.model for s in self.scores):
            for s in (s for s in self.scores if s.model == model):
                lines.append(f"{model:<22} {s.label:<12} {s.iou:6.3f}")
            lines.append(f"{model:<22} {'mean':<12} {self.mean_iou(model):6.3f}")
        lines.append(f"({self.images} images)")
        return "\n".join(lines)


def load_mapping(path: Path | None) -> dict[str, dict[str, list[str]]]:
    if path is None:
        return DEFAULT_MAPPING
    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the class mapping ({exc})") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        raise ConfigError(f'{path}: expected {{"model": {{"CamVid class": ["model class", ...]}}}}')
    return mapping


def pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by file stem; every image needs its label."""
    for folder in (images, labels):
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder}: not a folder")
    found = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    by_stem = {p.stem: p for p in Path(labels).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [p.name for p in found if p.stem not in by_stem]
    if missing:
        raise ConfigError(f"{labels}: no label for {', '.join(missing[:5])}")
    return [(p, by_stem[p.stem]) for p in found]


def predicted_classes(outputs: Mapping[str, np.ndarray], description: Mapping[str, object],
                      wanted: Mapping[str, set[str]]) -> dict[tuple[str, str], np.ndarray]:
    """{(model, model class): bool frame mask} for the classes in ``wanted`` (model → classes)."""
    result: dict[tuple[str, str], np.ndarray] = {}
    for out, info in description["outputs"].items():  # type: ignore[union-attr]
        model, kind = info["model"], info["kind"]
        need = wanted.get(model, set())
        if not need:
            continue
        place = Placement.from_dict(info["placement"])
        if kind == "binary":
            cls = zoo.card(model).classes[("drivable", "lanes").index(out)]
            if cls in need:
                result[model, cls] = map_to_frame(outputs[out][0], place) == 1
        elif kind == "semantic":
            full = map_to_frame(outputs[out][0], place)
            for cls in need:
                result[model, cls] = full == info["classes"].index(cls)
        elif kind == "instances":
            valid = outputs["scores"][0] > 0
            masks = masks_to_frame(outputs["masks"][0][valid], place)
            ids = outputs["classes"][0][valid]
            for cls in need:
                hits = masks[ids == info["classes"].index(cls)]
                result[model, cls] = hits.any(axis=0) if len(hits) else np.zeros(place.frame_size, bool)
    return result


def evaluate(name: str, images: Path, labels: Path, *, mapping: Mapping[str, Mapping[str, list[str]]] | None = None,
             dirs: zoo.WeightDirs | None = None, progress: bool = True) -> Report:
    """Per-class IoU of preset or model ``name`` over the labelled images."""
    mapping = mapping or DEFAULT_MAPPING
    data = pairs(Path(images), Path(labels))
    backends: dict[tuple[int, int], OnnxRuntimeBackend] = {}
    scores: dict[tuple[str, str], ClassScore] = {}
    with tempfile.TemporaryDirectory(prefix="segengine-eval-") as tmp:
        for image_path, label_path in tqdm(data, desc=f"eval {name}", disable=not progress):
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            if image is None or label is None:
                raise ConfigError(f"cannot read {image_path if image is None else label_path} as an image")
            if label.ndim != 2 or label.shape != image.shape[:2]:
                raise ConfigError(f"{label_path}: expected a single-channel {image.shape[1]}x{image.shape[0]} "
                                  f"label image, got shape {label.shape}")
            size = image.shape[:2]
            if size not in backends:
                graph = build_graph(name, size, dirs)
                backends[size] = OnnxRuntimeBackend(export_graph(graph, Path(tmp) / f"{size[1]}x{size[0]}.onnx"))
                _check_mapping(mapping, graph.describe())
            backend = backends[size]
            outputs = backend.infer(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            models = {info["model"] for info in backend.description["outputs"].values()}  # type: ignore
            wanted = {m: {c for cs in mapping.get(m, {}).values() for c in cs} for m in models}
            predicted = predicted_classes(outputs, backend.description, wanted)
            valid = label != CAMVID_VOID
            for model, targets in mapping.items():
                if model not in models:
                    continue
                for target, sources in targets.items():
                    pred = np.zeros(size, bool)
                    for cls in sources:
                        pred |= predicted[model, cls]
                    truth = label == CAMVID_CLASSES.index(target)
                    score = scores.setdefault((model, target), ClassScore(model, target))
                    score.intersection += int((pred & truth & valid).sum())
                    score.union += int(((pred | truth) & valid).sum())
        for backend in backends.values():
            backend.close()
    return Report(images=len(data), scores=list(scores.values()))


def _check_mapping(mapping: Mapping[str, Mapping[str, list[str]]], description: Mapping[str, object]) -> None:
    for info in description["outputs"].values():  # type: ignore[union-attr]
        model = info["model"]
        classes = info.get("classes") or zoo.card(model).classes
        for target, sources in mapping.get(model, {}).items():
            if target not in CAMVID_CLASSES:
                raise ConfigError(f"mapping for {model}: {target!r} is not a CamVid class ({', '.join(CAMVID_CLASSES)})")
            unknown = [c for c in sources if c not in classes]
            if unknown:
                raise ConfigError(f"mapping for {model}: {', '.join(unknown)} not among its classes")
