"""One stream's layer stages: each output through its per-stream stage, and the layers of frames
the networks skipped (``--interval N``) carried from the last inferred frame.

Runs on the thread that iterates the pipeline, in frame order, so the stages need no locks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segengine.layers.base import Carrier, LayerStage
from segengine.layers.instances import Instances


class LayerStages:
    """Per output name: its stage, made on the output's first frame (the caller's ``tracker`` for the
    first instances output, else its kind's own), and the last layer it gave."""

    def __init__(self, tracker: LayerStage | None = None) -> None:
        self.tracker = tracker
        self._stages: dict[str, LayerStage | None] = {}
        self._last: dict[str, Any] = {}  # output name → its layer in the last inferred frame, staged

    def update(self, layers: Mapping[str, Any], t: float) -> dict[str, Any]:
        """An inferred frame's layers (decoded at time ``t``) through their stages."""
        out = {}
        for name, layer in layers.items():
            stage = self._stage_for(name, layer)
            out[name] = layer if stage is None else stage.update(layer, t)
        self._last = out
        return dict(out)

    def carry(self, t: float) -> dict[str, Any]:
        """The layers of a frame at time ``t`` that the networks skipped: what a stage that can carry
        says (tracks moved by their motion), else the last inferred frame's layer as it was (maps,
        and trackers without ``carry``). Changes no stage's state."""
        out = {}
        for name, last in self._last.items():
            stage = self._stages.get(name)
            carried = stage.carry(t) if isinstance(stage, Carrier) else None
            out[name] = last if carried is None else carried
        return out

    def _stage_for(self, name: str, layer: object) -> LayerStage | None:
        if name not in self._stages:
            given = self.tracker is not None and isinstance(layer, Instances) and not any(
                s is self.tracker for s in self._stages.values())
            self._stages[name] = self.tracker if given else type(layer).stage()  # type: ignore[attr-defined]
        return self._stages[name]
