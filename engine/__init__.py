"""segengine: real-time video segmentation (lanes, drivable area, street classes, instance masks).

``with Pipeline("road.mp4") as p: for result in p: result.instances, result.lanes, ...``

The public API is below; heavy parts (the pipeline, the backends) load on first use, so
``import segengine`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segengine.errors import (
    BackendError,
    ConfigError,
    DownloadError,
    EndOfStream,
    EngineError,
    ModelError,
    SinkError,
    SourceError,
)
from segengine.layers import BinaryMap, Instances, LaneLines, SemanticMap
from segengine.types import Frame, FrameResult, SourceInfo, SourceStatus

if TYPE_CHECKING:
    from segengine.backends.base import Backend, BackendOptions
    from segengine.capture.base import Source, SourceOptions
    from segengine.capture.factory import open_source
    from segengine.graph.spec import GraphSpec
    from segengine.pipeline import Pipeline
    from segengine.render.compose import LayerRenderer
    from segengine.streams import MultiPipeline, StreamOptions

_LAZY = {
    "Pipeline": "segengine.pipeline", "open_source": "segengine.capture.factory",
    "MultiPipeline": "segengine.streams.pipeline", "StreamOptions": "segengine.streams.stream",
    "Source": "segengine.capture.base", "SourceOptions": "segengine.capture.base",
    "Backend": "segengine.backends.base", "BackendOptions": "segengine.backends.base",
    "GraphSpec": "segengine.graph.spec", "LayerRenderer": "segengine.render.compose",
}

__all__ = ["Backend", "BackendError", "BackendOptions", "BinaryMap", "ConfigError", "DownloadError", "EndOfStream",
           "EngineError", "Frame", "FrameResult", "GraphSpec", "Instances", "LaneLines", "LayerRenderer",
           "ModelError", "MultiPipeline", "Pipeline", "SemanticMap", "SinkError", "Source", "SourceError", "SourceInfo",
           "SourceOptions", "SourceStatus", "StreamOptions", "open_source"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segengine' has no attribute {name!r}")
