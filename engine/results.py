"""From a graph's raw outputs to a FrameResult, guided by the graph's own description."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from segengine.geometry import Placement
from segengine.types import Frame, FrameResult, Instances, SemanticMap


def decode(outputs: Mapping[str, np.ndarray], description: Mapping[str, object], frame: Frame) -> FrameResult:
    """Wrap every output the description names; nothing is resized here (that is done on demand)."""
    found: dict[str, object] = {}
    for name, info in description["outputs"].items():  # type: ignore[union-attr]
        placement = Placement.from_dict(info["placement"])
        kind = info["kind"]
        if kind == "instances":
            found["instances"] = Instances.from_outputs(outputs, placement, tuple(info["classes"]))
        elif kind == "binary":
            names = ("background", "drivable") if name == "drivable" else ("background", "lane")
            key = "drivable" if name == "drivable" else "lane_mask"
            found[key] = SemanticMap(outputs[name][0], placement, names)
        elif kind == "semantic":
            found["semantic"] = SemanticMap(outputs[name][0], placement, tuple(info["classes"]))
    return FrameResult(frame=frame, **found)  # type: ignore[arg-type]
