"""Class maps at model resolution (uint8 class ids over the network input), and the binary kind:
a two-class map such as the drivable area.

In JSON a map is COCO RLE per class present, at model resolution, with the placement that takes
it back to the frame (``map_from_json`` does it): the map covers the network input (``h×w`` over
``input_size``); the frame is the region ``rows = round(top·h/ih) .. round((top + resized_h)·h/ih)``,
``cols = round(left·w/iw) .. round((left + resized_w)·w/iw)``, resized to ``frame_size`` (nearest).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from segengine.checks import check
from segengine.errors import ConfigError
from segengine.geometry import Placement
from segengine.graph.readout import map_to_frame
from segengine.graph.spec import OutputSpec
from segengine.render.draw import check_opacity, smooth_class_mask, tint_where
from segengine.render.palette import Colour
from segengine.rle import decode_mask, encode_mask


@dataclass(frozen=True, eq=False)
class ClassMap:
    """The common part of every map kind: ids, where they sit, what they mean."""

    classes: np.ndarray  # h×w uint8 class ids at model resolution
    placement: Placement
    class_names: tuple[str, ...]

    kind: ClassVar[str] = "class_map"

    def __post_init__(self) -> None:
        check(self.classes.ndim == 2 and self.classes.dtype == np.uint8, f"{type(self).__name__}.classes",
              "an h×w uint8 map", f"{self.classes.shape} {self.classes.dtype}")

    def to_frame(self) -> np.ndarray:
        """H×W uint8 class ids at frame resolution (nearest)."""
        return map_to_frame(self.classes, self.placement)

    @classmethod
    def decode(cls, outputs: Mapping[str, np.ndarray], spec: OutputSpec, row: int) -> ClassMap:
        return cls(outputs[spec.tensors[0]][row], spec.placement, spec.classes)

    @classmethod
    def stage(cls) -> None:
        return None

    def to_json(self, *, masks: bool = True) -> dict[str, Any]:
        """``{"kind", "classes", "placement", "masks": {class name: RLE at model resolution}}``: every
        class present but "background"; ``"masks": null`` with ``masks=False``."""
        if not masks:
            return {"kind": self.kind, "classes": list(self.class_names), "placement": self.placement.to_dict(),
                    "masks": None}
        counts = np.bincount(self.classes.ravel(), minlength=len(self.class_names))
        present = [i for i in np.flatnonzero(counts) if i < len(self.class_names)
                   and self.class_names[i] != "background"]
        return {"kind": self.kind, "classes": list(self.class_names), "placement": self.placement.to_dict(),
                "masks": {self.class_names[i]: encode_mask(self.classes == i) for i in present}}

    def class_masks(self, names: Collection[str]) -> dict[str, np.ndarray]:
        full = self.to_frame()
        return {n: full == self.class_names.index(n) if n in self.class_names else np.zeros(full.shape, bool)
                for n in names}


def map_from_json(obj: Mapping[str, Any]) -> np.ndarray:
    """A map layer's JSON → H×W uint8 class ids at frame resolution ("background" where no class was
    written; class 0 when the map has no "background")."""
    if obj.get("masks") is None:
        raise ConfigError(f"this {obj.get('kind', 'map')} layer was written without its masks: "
                          "run `segengine run` again with --json-masks all")
    classes = list(obj["classes"])
    placement = Placement.from_dict(obj["placement"])
    rest = classes.index("background") if "background" in classes else 0
    masks = [decode_mask(rle) for rle in obj["masks"].values()]
    if not masks:
        return np.full(placement.frame_size, rest, np.uint8)
    grid = np.full(masks[0].shape, rest, np.uint8)
    for name, mask in zip(obj["masks"], masks):
        grid[mask] = classes.index(name)
    return map_to_frame(grid, placement)


@dataclass(frozen=True, eq=False)
class BinaryMap(ClassMap):
    """Class 1 is the thing (drivable area, a medical structure); class 0 the rest."""

    kind: ClassVar[str] = "binary_map"
    z: ClassVar[int] = 20

    @classmethod
    def drawer(cls) -> MapTint:
        return MapTint()


@dataclass(frozen=True)
class MapTint:
    """Tints class 1 of every binary map, with an edge that follows the shape (linear resampling)."""

    colour: Colour = (40, 220, 60)
    alpha: float = 0.2

    def __post_init__(self) -> None:
        check_opacity("MapTint.alpha", self.alpha)

    def draw(self, canvas: np.ndarray, result: Any) -> None:
        for layer in result.all(BinaryMap):
            tint_where(canvas, smooth_class_mask(layer.classes, layer.placement), self.colour, self.alpha)
