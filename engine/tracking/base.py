"""The Tracker interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from engine.types import Instances


@runtime_checkable
class Tracker(Protocol):
    def update(self, instances: Instances, t: float) -> Instances:
        """``instances`` with ``track_ids`` filled; ``t`` is the frame's time in seconds.
        Never mutates its input; ids come from this tracker's own counter."""
        ...

    def reset(self) -> None: ...
