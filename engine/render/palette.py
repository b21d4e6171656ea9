"""Colours: one per track id (stable across runs), one per class group, one per semantic class.

All colours are RGB tuples of ints in 0..255. Nothing here holds state: a colour is a
pure function of its id or name, so the same track is the same colour in every run.
"""

from __future__ import annotations

import colorsys
from enum import Enum

import numpy as np

Colour = tuple[int, int, int]

_GOLDEN = 0.6180339887498949  # hue step that keeps consecutive ids far apart on the wheel


class Group(Enum):
    """What an instance is, for how loudly it is drawn."""

    PEDESTRIAN = "pedestrian"
    RIDER = "rider"  # bicycles and motorcycles: vulnerable, fast
    VEHICLE = "vehicle"
    OBSTACLE = "obstacle"  # anything else on or near the road

    @property
    def hazard(self) -> bool:
        """Drawn in warning style: people and things that are not vehicles."""
        return self is not Group.VEHICLE


_GROUPS: dict[str, Group] = {
    "person": Group.PEDESTRIAN, "pedestrian": Group.PEDESTRIAN,
    "bicycle": Group.RIDER, "motorcycle": Group.RIDER, "rider": Group.RIDER,
    "car": Group.VEHICLE, "bus": Group.VEHICLE, "truck": Group.VEHICLE, "train": Group.VEHICLE,
}

GROUP_COLOURS: dict[Group, Colour] = {
    Group.PEDESTRIAN: (255, 40, 80),  # alarm red-magenta
    Group.RIDER: (255, 140, 0),  # orange
    Group.VEHICLE: (40, 160, 255),  # calm blue
    Group.OBSTACLE: (255, 214, 0),  # warning yellow
}

# Cityscapes' own colours, so maps look like the ones people already know.
CITYSCAPES: dict[str, Colour] = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "wall": (102, 102, 156),
    "fence": (190, 153, 153), "pole": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152),
    "sky": (70, 130, 180), "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142),
    "truck": (0, 0, 70), "bus": (0, 60, 100), "train": (0, 80, 100), "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32),
}


def group_of(class_name: str) -> Group:
    return _GROUPS.get(class_name, Group.OBSTACLE)


def track_colour(track_id: int) -> Colour:
    """A vivid colour for ``track_id``: golden-ratio hue steps, with value and saturation
    varied in slow cycles so that ids whose hues come close still differ."""
    i = int(track_id)
    hue = (i * _GOLDEN) % 1.0
    saturation = (0.9, 0.6)[(i // 4) % 2]  # periods chosen by search: widest gap over ids 0..50
    value = (1.0, 0.75)[(i // 2) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def instance_colour(track_id: int, class_name: str) -> Colour:
    """The track's colour, or the class group's colour while it has no track (id < 0)."""
    return track_colour(track_id) if track_id >= 0 else GROUP_COLOURS[group_of(class_name)]


def semantic_lut(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """256×3 uint8 lookup table: class id → colour; classes Cityscapes lacks get track colours,
    "background" (and ids past the names) stays black, which the tint treats as no colour."""
    lut = np.zeros((256, 3), np.uint8)
    for index, name in enumerate(class_names[:256]):
        if name != "background":
            lut[index] = CITYSCAPES.get(name, track_colour(index))
    return lut


def text_colour(background: Colour) -> Colour:
    """Black or white, whichever reads better on ``background`` (Rec. 601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)
