"""The renderer: a list of drawers (one per layer kind, and the HUD) applied in order to a copy of the frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segengine.layers import KINDS, Drawer
from segengine.render.hud import Hud
from segengine.types import FrameResult


def default_drawers(hud: bool = True) -> list[Drawer]:
    """Each layer kind's house style, underneath first (semantic tint, maps, lanes, instances), then the HUD."""
    drawers: list[Drawer] = [kind.drawer() for kind in sorted(KINDS.values(), key=lambda k: k.z)]
    return [*drawers, Hud()] if hud else drawers


class LayerRenderer:
    """``LayerRenderer([MapTint(alpha=0.3), InstanceDrawer(labels=False)])`` draws just those; with no
    list, every kind in its house style and the HUD. The frame itself is never changed."""

    def __init__(self, drawers: Sequence[Drawer] | None = None) -> None:
        self.drawers = list(default_drawers() if drawers is None else drawers)

    def render(self, result: FrameResult) -> np.ndarray:
        canvas = result.frame.image.copy()
        for drawer in self.drawers:
            drawer.draw(canvas, result)
        return canvas
