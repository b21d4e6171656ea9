"""The card every model family carries: what it is, where its weights come from, how to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ResizeMode = Literal["stretch", "letterbox"]
Task = Literal["lanes+drivable", "instance", "semantic"]


@dataclass(frozen=True)
class Preprocess:
    """How upstream turns an RGB uint8 image into the network's float32 NCHW input.

    ``stretch`` resizes straight to the input size; ``letterbox`` keeps the aspect
    ratio, centres the image and pads with ``pad_value``. Both use bilinear
    interpolation with half-pixel centres (OpenCV's INTER_LINEAR). Values are scaled
    to [0, 1], then ``(x - mean) / std`` per RGB channel.
    """

    resize: ResizeMode
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: int = 114


@dataclass(frozen=True)
class ModelCard:
    name: str
    task: Task
    summary: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width) of the raw network input
    preprocess: Preprocess
    raw_outputs: tuple[str, ...]  # upstream's outputs, in upstream's order
    filename: str  # name of the weight file in a cache or mirror
    url: str
    sha256: str
    size_bytes: int
    licence: str
    upstream: str  # where upstream's code lives
    accuracy: str = ""  # what we measured, with the data it was measured on
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def input_hw(self) -> str:
        return f"{self.input_size[1]}x{self.input_size[0]}"
