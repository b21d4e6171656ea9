"""The Backend interface: runs an exported segengine graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str
    description: Mapping[str, object]  # the graph's own description (ONNX metadata "segengine")

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 H×W×3 RGB → the graph's outputs by name."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Pipelined(Protocol):
    """A backend that can keep one frame in flight: ``submit`` returns before the frame is
    computed, ``collect`` returns the oldest submitted frame's outputs (arrays the caller owns)."""

    def submit(self, frame: np.ndarray) -> None: ...

    def collect(self) -> dict[str, np.ndarray]: ...
