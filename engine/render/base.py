"""The Renderer interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from segengine.types import FrameResult


@runtime_checkable
class Renderer(Protocol):
    def render(self, result: FrameResult) -> np.ndarray:
        """An H×W×3 uint8 RGB image: the frame with the result drawn over it (the frame is not modified)."""
        ...
