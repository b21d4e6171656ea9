"""INT8 for OpenVINO: NNCF post-training quantisation of a segengine graph, on the user's own frames.

Only the networks are quantised. Everything the graph does around them (the uint8 frame's
resize and normalisation, box decoding, NMS / TopK, mask assembly, the argmax maps) stays in
float: it is cheap, and rounding it would move boxes, flip thresholds and shift masks. Which ONNX
node belongs to which part is read from the exporter's ``pkg.torch.onnx.name_scopes`` metadata
(``heads.N.pre`` / ``heads.N.net`` / ``heads.N.decode``); a recipe (``Int8Recipe``) can keep more of
each network in float (its heads, first and last convolutions, attention) by module path.

nncf and openvino are imported only when a model is quantised: both are optional.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segengine.errors import BackendError, ConfigError
from segengine.graph.spec import GraphSpec

NNCF_FIX = "pip install -e '.[int8]' (nncf, with openvino)"
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class Int8Recipe:
    """A quantisation recipe: per model, module paths inside its network (``model.24`` is YOLOv5's
    Segment head) that stay in float besides the pre- and post-processing, which always do; and
    NNCF's preset ("performance": symmetric activations; "mixed": asymmetric, for PReLU outputs)."""

    name: str
    modules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    preset: str = "performance"

    @property
    def identity(self) -> str:
        """What an INT8 model built with this recipe depends on (its cache key)."""
        body = json.dumps({"modules": {m: list(p) for m, p in sorted(self.modules.items())}, "preset": self.preset},
                          sort_keys=True)
        return f"{self.name}:{hashlib.sha256(body.encode()).hexdigest()[:12]}"


# The recipes measured (README, Performance), in the order tried; RECIPES[DEFAULT_RECIPE] is what
# `build --int8` uses. TwinLiteNet's encoder is what INT8 hurts: its ESP blocks add dilated branches
# and re-inject the raw image by concatenation; with it quantised Road lost 1 to 25 IoU points. YOLOv5's
# first convolution (on the letterboxed image) cost up to 2.5 Car points; kept float, none.
_HEADS = {"yolov5s-seg": ("model.24",), "twinlitenet": ("classifier_1", "classifier_2")}
_ENDS = {"yolov5s-seg": ("model.0",), "twinlitenet": ("encoder.level1",)}
_ATTENTION = {"twinlitenet": ("encoder.sa", "encoder.sc")}
_ENCODER = {"twinlitenet": ("encoder",)}
_TWINLITENET = {"twinlitenet": ("encoder", "up_1_1", "up_2_1", "classifier_1", "up_1_2", "up_2_2", "classifier_2")}


def _merge(*parts: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for part in parts:
        for model, paths in part.items():
            out[model] = tuple(dict.fromkeys(out.get(model, ()) + paths))
    return out


RECIPES: dict[str, Int8Recipe] = {
    "networks": Int8Recipe("networks"),
    "heads": Int8Recipe("heads", _merge(_HEADS)),
    "heads-ends": Int8Recipe("heads-ends", _merge(_HEADS, _ENDS)),
    "heads-ends-attention": Int8Recipe("heads-ends-attention", _merge(_HEADS, _ENDS, _ATTENTION)),
    "encoder-first": Int8Recipe("encoder-first", _merge(_ENCODER, {"yolov5s-seg": ("model.0",)})),
    "encoder-first-head": Int8Recipe("encoder-first-head", _merge(_ENCODER, {"yolov5s-seg": ("model.0", "model.24")})),
    "yolo-only": Int8Recipe("yolo-only", _merge(_TWINLITENET, {"yolov5s-seg": ("model.0", "model.24")})),
}
DEFAULT_RECIPE = "encoder-first-head"


def node_scopes(graph: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """ONNX node name → its torch module path (``('', 'heads.0', 'heads.0.net', ...)``); () where unknown."""
    out: dict[str, tuple[str, ...]] = {}
    for node in graph.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get(_SCOPES_KEY, "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        out[node.name] = tuple(str(s) for s in scopes)
    return out


def quantised_nodes(scopes: Mapping[str, tuple[str, ...]], head_models: Sequence[str], recipe: Int8Recipe) -> set[str]:
    """The ONNX nodes NNCF may quantise: inside ``heads.N.net`` and outside the recipe's float modules."""
    chosen: set[str] = set()
    for name, path in scopes.items():
        if len(path) < 3 or not path[1].startswith("heads."):
            continue
        head = path[1]
        try:
            model = head_models[int(head.split(".", 1)[1])]
        except (ValueError, IndexError):
            continue
        net = f"{head}.net"
        if path[2] != net:
            continue  # the head's preprocessing or decoding
        inside = {p[len(net) + 1:] for p in path[3:] if p.startswith(net + ".")}
        keep = recipe.modules.get(model, ())
        if any(m == k or m.startswith(k + ".") for m in inside for k in keep):
            continue
        chosen.add(name)
    return chosen


def head_models(spec: GraphSpec) -> tuple[str, ...]:
    """Each head's model, in head order (``heads.N``): the spec lists outputs head by head."""
    return tuple(dict.fromkeys(out.model for out in spec.outputs))


def ignored_names(ops: Iterable[Any], quantised: set[str], onnx_names: Iterable[str]) -> list[str]:
    """OpenVINO op names to leave out: every op not made from a quantised ONNX node. OpenVINO names an op
    after its ONNX node, with a suffix for the parts a node is split into (``node_Conv_5/WithoutBiases``);
    a part with a name of its own (a ConvTranspose's ``ConvolutionBackpropData_12``) belongs to the node
    its output feeds."""
    onnx_names = set(onnx_names)

    def origin(op: Any, depth: int = 0) -> str:
        base = op.get_friendly_name().split("/", 1)[0]
        consumers = [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
        if base in onnx_names or len(consumers) != 1 or depth >= 3:
            return base
        return origin(consumers[0], depth + 1)

    return sorted({op.get_friendly_name() for op in ops if origin(op) not in quantised})


def import_nncf() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise BackendError(f"INT8 for OpenVINO needs NNCF, which is not installed: {NNCF_FIX}") from exc
    return nncf


def quantize(graph: Path, spec: GraphSpec, frames: Sequence[np.ndarray], *,
             recipe: Int8Recipe = RECIPES[DEFAULT_RECIPE], fast_bias_correction: bool = True) -> Any:
    """The graph's OpenVINO model with its networks quantised to INT8, calibrated on ``frames``
    (uint8 H×W×3 RGB at the graph's frame size: the graph does its own preprocessing)."""
    nncf = import_nncf()
    from segengine.backends.openvino import core

    # NNCF logs a line per op it leaves out (hundreds here); the build says what it does itself.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    if not frames:
        raise ConfigError("INT8 calibration needs at least one frame")
    h, w = spec.frame_size
    for i, frame in enumerate(frames):
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ConfigError(f"calibration frame {i}: expected uint8 {h}x{w}x3, got {frame.dtype} {frame.shape}")
    scopes = node_scopes(onnx.load(str(graph), load_external_data=False))
    quantised = quantised_nodes(scopes, head_models(spec), recipe)
    if not quantised:
        raise BackendError(f"{graph}: no network found to quantise (its nodes carry no torch module paths: "
                           "INT8 needs a graph exported by this segengine; run `segengine build` on a preset)")
    model = core().read_model(str(graph))
    ignored = ignored_names(model.get_ordered_ops(), quantised, scopes)
    dataset = nncf.Dataset(list(frames), lambda frame: frame[None])
    preset = nncf.QuantizationPreset.MIXED if recipe.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    return nncf.quantize(model, dataset, preset=preset, subset_size=len(frames),
                         fast_bias_correction=fast_bias_correction,
                         ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
