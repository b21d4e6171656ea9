"""Semantic-segmentation evaluation against per-pixel label images (CamVid-style ids).

Every model is run through the engine's own graph, so the numbers measure what users get,
pre- and post-processing included. Instance models are scored by merging their masks per
class. IoU is accumulated over the whole set (intersection and union summed over images).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from segengine.backends.base import Backend, BackendOptions
from segengine.backends.registry import choose, open_backend, prepare_for
from segengine.errors import ConfigError
from segengine.graph.prepare import GraphTarget
from segengine.graph.spec import GraphSpec
from segengine.layers import Layer, decode_layers
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


def predicted_classes(layers: Mapping[str, Layer], spec: GraphSpec,
                      wanted: Mapping[str, set[str]]) -> dict[tuple[str, str], np.ndarray]:
    """{(model, model class): bool frame mask} for the classes in ``wanted`` (model → classes), from
    every layer that model gave (a class two of its layers share is their union)."""
    result: dict[tuple[str, str], np.ndarray] = {}
    for out in spec.outputs:
        need = wanted.get(out.model, set()) & set(out.classes)
        for cls, mask in layers[out.name].class_masks(need).items():
            key = (out.model, cls)
            result[key] = result[key] | mask if key in result else mask
    return result


def evaluate(name: str, images: Path, labels: Path, *, mapping: Mapping[str, Mapping[str, list[str]]] | None = None,
             dirs: zoo.WeightDirs | None = None, progress: bool = True, backend: str = "onnxruntime",
             precision: str = "auto") -> Report:
    """Per-class IoU of preset or model ``name`` over the labelled images, through ``backend`` at ``precision``."""
    mapping = mapping or DEFAULT_MAPPING
    data = pairs(Path(images), Path(labels))
    choice = choose(backend)
    backends: dict[tuple[int, int], Backend] = {}
    scores: dict[tuple[str, str], ClassScore] = {}
    try:
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
                backends[size] = open_backend(choice, prepare_for(choice, GraphTarget(name), size, dirs),
                                              BackendOptions(precision=precision, dirs=dirs))
                _check_mapping(mapping, backends[size].spec)
            spec = backends[size].spec
            layers = decode_layers(backends[size].infer(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), spec)
            models = {out.model for out in spec.outputs}
            wanted = {m: {c for cs in mapping.get(m, {}).values() for c in cs} for m in models}
            predicted = predicted_classes(layers, spec, wanted)
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
    finally:
        for opened in backends.values():
            opened.close()
    return Report(images=len(data), scores=list(scores.values()))


def _check_mapping(mapping: Mapping[str, Mapping[str, list[str]]], spec: GraphSpec) -> None:
    for model in dict.fromkeys(out.model for out in spec.outputs):
        classes = {c for out in spec.outputs if out.model == model for c in out.classes}
        for target, sources in mapping.get(model, {}).items():
            if target not in CAMVID_CLASSES:
                raise ConfigError(f"mapping for {model}: {target!r} is not a CamVid class "
                                  f"({', '.join(CAMVID_CLASSES)})")
            unknown = [c for c in sources if c not in classes]
            if unknown:
                raise ConfigError(f"mapping for {model}: {', '.join(unknown)} not among its classes")
