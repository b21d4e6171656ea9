"""Per-output layers: each kind decodes itself from the graph outputs, draws, serialises and is scored.

``KINDS`` maps a graph spec's output kind to its layer type: adding a kind is a graph head that
writes its ``OutputSpec``, one file here, and its line below.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from segengine.errors import ConfigError
from segengine.graph.spec import GraphSpec
from segengine.layers.base import Drawer, Layer, LayerStage
from segengine.layers.instances import InstanceDrawer, Instances
from segengine.layers.lanes import LaneDrawer, LaneFollower, LaneLines
from segengine.layers.maps import BinaryMap, ClassMap, MapTint, map_from_json
from segengine.layers.semantic import SemanticMap, SemanticTint

KINDS: dict[str, type] = {t.kind: t for t in (Instances, BinaryMap, LaneLines, SemanticMap)}

__all__ = ["KINDS", "BinaryMap", "ClassMap", "Drawer", "InstanceDrawer", "Instances", "LaneDrawer", "LaneFollower",
           "LaneLines", "Layer", "LayerStage", "MapTint", "SemanticMap", "SemanticTint", "decode_layers",
           "layer_type", "map_from_json"]


def layer_type(kind: str) -> type:
    try:
        return KINDS[kind]
    except KeyError:
        raise ConfigError(f"graph output kind {kind!r} is not known to this segengine "
                          f"(known: {', '.join(KINDS)}); upgrade segengine or export the graph again") from None


def decode_layers(outputs: Mapping[str, np.ndarray], spec: GraphSpec, row: int = 0) -> dict[str, Layer]:
    """Every layer of batch row ``row``, by output name, in the spec's order. Nothing is resized here."""
    return {out.name: layer_type(out.kind).decode(outputs, out, row) for out in spec.outputs}
