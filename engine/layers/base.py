"""What every output layer is: decoded from one batch row of the graph's outputs, drawn, written, scored.

A layer kind is one file in this package: its data (a frozen dataclass), ``decode`` from the
tensors its ``OutputSpec`` names, ``to_json``, ``class_masks`` for the evaluator, the drawer
the default renderer uses for it, and, for kinds with per-stream state (tracks, smoothed lanes),
the stage that carries that state from frame to frame.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from segengine.graph.spec import OutputSpec

if TYPE_CHECKING:
    from segengine.types import FrameResult


@runtime_checkable
class Drawer(Protocol):
    """Draws part of a result onto the canvas (H×W×3 uint8 RGB, changed in place); style is set in
    the constructor."""

    def draw(self, canvas: np.ndarray, result: FrameResult) -> None: ...


@runtime_checkable
class LayerStage(Protocol):
    """Per-stream state over one layer (a tracker, a lane smoother): on exactly one thread, in frame order."""

    def update(self, layer: Any, t: float) -> Any:
        """The layer with its state applied (a new object; ``layer`` is not changed); ``t`` in seconds."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class Carrier(Protocol):
    """A stage that can answer for a frame the networks skipped (``--interval N``)."""

    def carry(self, t: float) -> Any:
        """The layer at time ``t`` from the state so far (e.g. tracks moved by their motion), or None
        when there is nothing to carry yet; changes no state."""
        ...


class Layer(Protocol):
    kind: ClassVar[str]
    z: ClassVar[int]  # drawing order in the default renderer: low first (underneath)

    @classmethod
    def decode(cls, outputs: Mapping[str, np.ndarray], spec: OutputSpec, row: int) -> Layer:
        """This layer for batch row ``row`` of the graph outputs (by tensor name)."""
        ...

    @classmethod
    def drawer(cls) -> Drawer:
        """The house style for this kind."""
        ...

    @classmethod
    def stage(cls) -> LayerStage | None:
        """A fresh per-stream stage for this kind, or None when it keeps no state."""
        ...

    def to_json(self, *, masks: bool = True) -> dict[str, Any]:
        """JSON-ready, with ``"kind"``; the JSONL schema documents each kind's keys. ``masks=False``:
        the RLE keys are null (encoding them is most of the cost)."""
        ...

    def class_masks(self, names: Collection[str]) -> dict[str, np.ndarray]:
        """bool H×W masks at frame resolution for the named classes (absent classes: all False)."""
        ...
