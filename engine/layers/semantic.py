"""Semantic class maps (street classes, say): every pixel one class, tinted in the classes' colours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from segengine.layers.maps import ClassMap
from segengine.render.draw import check_opacity
from segengine.render.palette import semantic_lut


@dataclass(frozen=True, eq=False)
class SemanticMap(ClassMap):
    kind: ClassVar[str] = "semantic"
    z: ClassVar[int] = 10

    @classmethod
    def drawer(cls) -> SemanticTint:
        return SemanticTint()


@dataclass(frozen=True)
class SemanticTint:
    """Each class in its colour (Cityscapes' own where it has one); "background" is left untouched."""

    alpha: float = 0.35

    def __post_init__(self) -> None:
        check_opacity("SemanticTint.alpha", self.alpha)

    def draw(self, canvas: np.ndarray, result: Any) -> None:
        for layer in result.all(SemanticMap):
            lut = semantic_lut(layer.class_names)
            classes = layer.to_frame()
            colours = cv2.LUT(cv2.merge([classes, classes, classes]), lut.reshape(256, 1, 3))
            tinted = cv2.addWeighted(canvas, 1.0 - self.alpha, colours, self.alpha, 0.0)
            cv2.copyTo(tinted, cv2.LUT(classes, (lut.any(axis=1) * 255).astype(np.uint8)), canvas)
