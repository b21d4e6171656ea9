"""Build and export the engine's graph for a preset or a single model, at a given frame size."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

from segengine.errors import ConfigError
from segengine.geometry import letterbox, stretch
from segengine.graph import intdiv
from segengine.graph.heads import Head, InstanceHead, LaneHead, SemanticHead
from segengine.graph.naming import name_nodes
from segengine.graph.spec import INPUT_NAME, GraphSpec, InputSpec
from segengine.models import zoo

# Our own ops and their ONNX: exact integer division.
TRANSLATIONS = dict(intdiv.TRANSLATIONS)

PRESETS: dict[str, tuple[str, ...]] = {
    "road": ("twinlitenet", "yolov5s-seg"),
    "street": ("twinlitenet", "yolov5s-seg", "espnetv2-cityscapes"),
}


class SegmentationGraph(torch.nn.Module):
    """uint8 B×H×W×3 RGB frames → every head's outputs, in ``output_names`` order, batch axis first.
    ``max_batch`` > 1: exported with a dynamic batch axis of 1..max_batch; 1: static, batch 1."""

    def __init__(self, heads: Sequence[Head], frame_size: tuple[int, int], name: str, max_batch: int = 1) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)
        self.frame_size = frame_size
        self.name = name
        self.max_batch = max_batch
        self.output_names = tuple(o for h in heads for o in h.outputs)
        if len(set(self.output_names)) != len(self.output_names):
            raise ConfigError(f"graph {name}: two heads produce the same output ({self.output_names})")

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for head in self.heads for t in head(frame))

    def spec(self) -> GraphSpec:
        batch = InputSpec(self.frame_size, max_batch=self.max_batch, dynamic_batch=self.max_batch > 1)
        return GraphSpec(self.name, batch, tuple(s for h in self.heads for s in h.specs()))


def model_names(name: str) -> tuple[str, ...]:
    """The models behind a preset name or a single model name."""
    if name in PRESETS:
        return PRESETS[name]
    if name in zoo.FAMILIES:
        return (name,)
    raise ConfigError(f"unknown preset or model {name!r}; presets: {', '.join(PRESETS)}; "
                      f"models: {', '.join(zoo.FAMILIES)}")


def head_for(model: str, frame_size: tuple[int, int], dirs: zoo.WeightDirs | None = None) -> Head:
    card = zoo.card(model)
    net = zoo.load(model, dirs=dirs)
    if card.task == "lanes+drivable":
        return LaneHead(model, net, stretch(frame_size, card.input_size), card.preprocess)
    if card.task == "semantic":
        return SemanticHead(model, net, stretch(frame_size, card.input_size), card.preprocess, card.classes)
    if card.task == "instance":
        place = letterbox(frame_size, long_side=max(card.input_size))
        return InstanceHead(model, net, place, card.preprocess, card.classes)
    raise ConfigError(f"model {model}: no head for task {card.task!r}")


def build_graph(name: str, frame_size: tuple[int, int], dirs: zoo.WeightDirs | None = None,
                max_batch: int = 1) -> SegmentationGraph:
    """The graph of preset or model ``name`` for frames of ``frame_size`` (height, width), taking
    batches of 1..``max_batch`` frames."""
    check_frame_size(frame_size)
    InputSpec(frame_size, max_batch=max_batch)  # its check: max_batch >= 1
    heads = [head_for(m, frame_size, dirs) for m in model_names(name)]
    return SegmentationGraph(heads, frame_size, name, max_batch).eval()


def check_frame_size(frame_size: tuple[int, int]) -> None:
    InputSpec(frame_size)  # its check: 16..8192 per side


def export_graph(graph: SegmentationGraph, path: Path) -> Path:
    """Write ``graph`` as ONNX with its spec in the model's metadata: static at batch 1, or with a
    dynamic batch axis of 1..max_batch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = graph.frame_size
    dynamic = None
    if graph.max_batch > 1:
        # The example at batch 2: torch.export specialises a dimension whose example is 0 or 1, and
        # with Dim(min=1) and a batch-1 example it wrote a static batch-1 graph, silently (torch 2.13).
        dynamic = ({0: torch.export.Dim("batch", min=1, max=graph.max_batch)},)
    frame = torch.zeros(2 if dynamic else 1, h, w, 3, dtype=torch.uint8)
    export_module(graph, (frame,), path, (INPUT_NAME,), graph.output_names, dynamic_shapes=dynamic)
    model = onnx.load(str(path))
    name_nodes(model, {f"heads.{i}": head.name for i, head in enumerate(graph.heads)})
    graph.spec().write(model)
    onnx.save(model, str(path))
    return path


def export_raw(model: str, path: Path, dirs: zoo.WeightDirs | None = None) -> Path:
    """The bare network with upstream's input and outputs (float32 NCHW, batch 1, card size)."""
    card = zoo.card(model)
    net = zoo.load(model, dirs=dirs)
    x = torch.zeros(1, 3, *card.input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_module(net, (x,), path, ("input",), card.raw_outputs)
    return path


def export_module(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path,
                  input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_shapes: tuple[dict[int, Any], ...] | None = None) -> None:
    """Export ``module`` at the examples' static shapes (but for ``dynamic_shapes``, torch.export's
    per-input dimensions), with our own ops translated."""
    # The exporter narrates its steps and warns about optional packages (torchvision) we do
    # not use; users only need our own messages.
    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(module.eval(), examples, str(path), dynamo=True, external_data=False,
                          input_names=list(input_names), output_names=list(output_names),
                          custom_translation_table=TRANSLATIONS, verbose=False, dynamic_shapes=dynamic_shapes)
