"""Preparing what a backend runs: a preset's (or the user's model's) graph for one frame size.

Backends never know about presets: each says which form of graph it takes (``graph_format``)
and this module makes that form, exported and cached, with its spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from segengine.errors import ConfigError
from segengine.graph.spec import GraphSpec
from segengine.models import zoo

GraphFormat = Literal["onnx", "torch"]


@dataclass(frozen=True)
class GraphTarget:
    """What to run: a preset or zoo model by name, or the user's own ONNX model (with its class list)."""

    name: str = "road"
    model_file: Path | None = None
    classes: Path | None = None

    def __post_init__(self) -> None:
        if self.classes is not None and self.model_file is None:
            raise ConfigError("a class list (--classes) goes with your own model (--model FILE.onnx); "
                              "the presets have their own classes")

    def models(self) -> tuple[str, ...]:
        """The networks its graph holds (a user's model by its file name, as its spec says)."""
        if self.model_file is not None:
            return (Path(self.model_file).name,)
        from segengine.graph.compose import model_names

        return model_names(self.name)


@dataclass(frozen=True)
class PreparedGraph:
    graph: Any  # an ONNX file (Path) for "onnx", a torch module for "torch"
    spec: GraphSpec


def prepare(target: GraphTarget, frame_size: tuple[int, int], fmt: GraphFormat,
            dirs: zoo.WeightDirs | None = None, max_batch: int = 1) -> PreparedGraph:
    """``target``'s graph for ``frame_size`` in form ``fmt``, taking batches of 1..``max_batch`` frames.

    A user's own model (``model_file``) is always wrapped at batch 1, whatever ``max_batch`` asks:
    its network is fixed to batch 1 when it is spliced in (``graph.custom``). Its spec then says
    ``max_batch=1``, and callers read the spec and send one frame at a time."""
    dirs = dirs or zoo.WeightDirs.from_env()
    if fmt == "torch":
        if target.model_file is not None:
            raise ConfigError(f"{target.model_file}: an ONNX model runs on an ONNX backend (onnxruntime, "
                              "tensorrt), not on torch")
        from segengine.graph.compose import build_graph

        module = build_graph(target.name, frame_size, dirs, max_batch)
        return PreparedGraph(module, module.spec())
    from segengine.graph.cache import cached_custom_graph, cached_graph

    if target.model_file is not None:
        path = cached_custom_graph(target.model_file, frame_size, classes=target.classes, dirs=dirs)
    else:
        path = cached_graph(target.name, frame_size, dirs=dirs, max_batch=max_batch)
    return PreparedGraph(path, GraphSpec.read_file(path))
