"""Bring your own ONNX model: a YOLO-seg or semantic-segmentation network turned into a segengine graph.

The user's network is kept as it is (only its input is fixed to batch 1 and one size). The
pre-processing (uint8 frame → its input) and post-processing (decode + NMS, or argmax) come
from the very heads the presets use, exported alone and spliced around it, so the result has
the presets' input, outputs and spec and the rest of the engine runs it unchanged.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx.compose
import onnx.version_converter
import onnxruntime as ort
import torch

from segengine.errors import ConfigError, ModelError
from segengine.geometry import letterbox, stretch
from segengine.graph.class_list import MAX_CLASSES, ClassList, parse_names, read_class_list
from segengine.graph.compose import SegmentationGraph, check_frame_size, export_module
from segengine.graph.heads import InstanceHead, SemanticHead
from segengine.graph.onnx_scan import scan_onnx
from segengine.graph.spec import INPUT_NAME, METADATA_KEY
from segengine.models.card import Preprocess

log = logging.getLogger(__name__)

Kind = Literal["yolo-v5", "yolo-v8", "semantic"]
Dims = tuple[int | None, ...]  # None: a dynamic dimension
DEFAULT_SIZE = (640, 640)  # Ultralytics' default, for models exported with a dynamic input
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_INPUT_SIDE = 16384  # a declared input beyond this is a damaged file, not a model (the export feeds it zeros)
FLOAT = onnx.TensorProto.FLOAT
INTEGERS = {getattr(onnx.TensorProto, t) for t in ("INT64", "INT32", "INT16", "INT8", "UINT16", "UINT8")}
SUPPORTED = ("supported: one float32 1×3×H×W input, and either two outputs (YOLO-seg: 1×N×(5+nc+nm) as "
             "YOLOv5 or 1×(4+nc+nm)×N as YOLOv8/11, plus prototypes 1×nm×h×w) or one output (semantic: "
             "1×C×h×w float32 logits or 1×h×w integer class ids)")


@dataclass(frozen=True)
class ModelSpec:
    """What a user's ONNX model is, as read from its input and output shapes and its metadata."""

    path: Path
    kind: Kind
    input_name: str
    input_size: tuple[int, int]  # (height, width) the graph will feed it
    input_size_assumed: bool  # the input is dynamic: the graph feeds it DEFAULT_SIZE
    num_classes: int
    classes: tuple[str, ...]
    outputs: tuple[str, ...]  # YOLO: (predictions, prototypes); semantic: (logits or class ids,)
    class_ids: bool = False  # a semantic model that outputs class ids rather than logits


def inspect_onnx(path: Path | str, classes: ClassList | None = None) -> ModelSpec:
    """Read what kind of model ``path`` is; raise ModelError/ConfigError saying why when unsupported."""
    path = Path(path)
    return _inspect(path, scan_onnx(path).model, classes)  # never loads its nodes or weights


def export_custom_graph(path: Path | str, frame_size: tuple[int, int], out_path: Path | str, *,
                        classes: ClassList | None = None, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, conf: float = 0.25, iou: float = 0.45,
                        top_k: int = 100) -> Path:
    """Write a segengine graph (uint8 frame in, preset outputs and spec) around the model at ``path``.

    YOLO models get Ultralytics' letterbox (pad 114) and x/255 unless ``mean``/``std`` say
    otherwise; semantic models a stretch with ``mean``/``std`` (ImageNet's by default).
    """
    path, out_path = Path(path), Path(out_path)
    check_frame_size(frame_size)
    scan_onnx(path)  # the size and node caps, before the whole model is loaded
    model = _load(path, external_data=True)
    spec = _inspect(path, model, classes)
    net = _fixed_input(model, spec)
    shapes = _output_shapes(net, spec)
    head = _head(spec, frame_size, mean, std, conf, iou, top_k, shapes)
    graph = SegmentationGraph([head], frame_size, path.name)  # the file name: never taken for a zoo model's
    frame = torch.zeros(1, *frame_size, 3, dtype=torch.uint8)
    examples = tuple(torch.from_numpy(np.zeros(s, dtype=d)) for s, d in shapes)
    post_inputs = ("pred", "protos") if isinstance(head, InstanceHead) else ("net_out",)
    post = head.decode if isinstance(head, InstanceHead) else _ClassMap(spec.class_ids)
    with tempfile.TemporaryDirectory() as tmp:
        export_module(head.pre, (frame,), Path(tmp, "pre.onnx"), (INPUT_NAME,), ("image",))
        export_module(post, examples, Path(tmp, "post.onnx"), post_inputs, graph.output_names)
        pre, post_model = onnx.load(str(Path(tmp, "pre.onnx"))), onnx.load(str(Path(tmp, "post.onnx")))
    merged = _splice(spec, pre, net, post_model, post_inputs)
    # Keep the user's own metadata (licence, author, names) next to our spec.
    onnx.helper.set_model_props(merged, {e.key: e.value for e in model.metadata_props})
    graph.spec().write(merged)
    try:
        onnx.checker.check_model(merged)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path}: the spliced graph is not valid ONNX ({exc})") from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out_path))
    return out_path


class _NetworkInOnnx(torch.nn.Module):
    """Stands in a head for the user's network, which exists only as ONNX and is spliced in later."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a custom model's network runs only inside its exported ONNX graph")


class _ClassMap(torch.nn.Module):
    """What SemanticHead does after its network: logits → argmax, or class ids as they are, as uint8."""

    def __init__(self, class_ids: bool) -> None:
        super().__init__()
        self.class_ids = class_ids

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return (out if self.class_ids else out.argmax(dim=1)).to(torch.uint8)


def _load(path: Path, *, external_data: bool) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError, OSError for missing external data
        raise ModelError(f"{path}: not a readable ONNX file ({exc})") from exc


def _inspect(path: Path, model: onnx.ModelProto, classes: ClassList | None) -> ModelSpec:
    props = {e.key: e.value for e in model.metadata_props}
    if METADATA_KEY in props:
        raise ConfigError(f"{path}: this is already a segengine graph; run it as it is")
    inputs = _real_inputs(model.graph)
    if len(inputs) != 1:
        raise ModelError(f"{path}: {len(inputs)} inputs ({_show(inputs)}); {SUPPORTED}")
    dims = _dims(inputs[0])
    if _dtype(inputs[0]) != FLOAT or len(dims) != 4 or dims[0] not in (1, None) or dims[1] != 3:
        raise ModelError(f"{path}: input {_show(inputs)} is not an image batch; {SUPPORTED}")
    h, w = dims[2], dims[3]
    if max(h or 0, w or 0) > MAX_INPUT_SIDE:
        raise ModelError(f"{path}: input {_show(inputs)} is larger than {MAX_INPUT_SIDE} on a side; {SUPPORTED}")
    size, assumed = ((h, w), False) if h is not None and w is not None else (DEFAULT_SIZE, True)
    if assumed:
        log.warning("%s: its input %s is dynamic; the graph feeds it %dx%d", path, _show(inputs), *size[::-1])
    outputs = list(model.graph.output)
    nc: int | None
    names: tuple[str, ...]
    if len(outputs) == 2:
        kind, nc, names = _yolo_outputs(path, outputs)
        class_ids = False
    elif len(outputs) == 1:
        kind, names = "semantic", (outputs[0].name,)
        nc, class_ids = _semantic_output(path, outputs[0])
    else:
        raise ModelError(f"{path}: {len(outputs)} outputs ({_show(outputs)}); {SUPPORTED}")
    class_names = _class_names(path, nc, classes, props, yolo=kind != "semantic")
    if kind == "semantic" and len(class_names) > 256:
        raise ModelError(f"{path}: {len(class_names)} classes do not fit the uint8 class map (at most 256)")
    return ModelSpec(path, kind, inputs[0].name, size, assumed, len(class_names), class_names, names, class_ids)


def _yolo_outputs(path: Path, outputs: list[onnx.ValueInfoProto]) -> tuple[Kind, int, tuple[str, str]]:
    by_rank = {len(_dims(o)): o for o in outputs}
    pred, protos = by_rank.get(3), by_rank.get(4)
    if pred is None or protos is None or _dtype(pred) != FLOAT or _dtype(protos) != FLOAT:
        raise ModelError(f"{path}: outputs {_show(outputs)} are not YOLO-seg predictions and prototypes; {SUPPORTED}")
    _, a, b = _dims(pred)
    nm = _dims(protos)[1]
    # Channels are few (nc + 37 or so) and candidates many (thousands): the larger or the
    # dynamic dimension is the candidates'.
    if a is not None and b is not None and a != b:
        v5 = a > b
    elif (a is None) != (b is None):
        v5 = a is None
    else:
        raise ModelError(f"{path}: cannot tell channels from candidates in {_show([pred])}; {SUPPORTED}")
    channels = b if v5 else a
    nc = (channels or 0) - (5 if v5 else 4) - (nm or 0)
    if nm is None or nc < 1:
        raise ModelError(f"{path}: {_show([pred])} with prototypes {_show([protos])} leaves no channel for "
                         f"classes ({'YOLOv5: box, objectness' if v5 else 'YOLOv8/11: box'}, then nc, then nm "
                         f"mask coefficients); {SUPPORTED}")
    return ("yolo-v5" if v5 else "yolo-v8"), nc, (pred.name, protos.name)


def _semantic_output(path: Path, out: onnx.ValueInfoProto) -> tuple[int | None, bool]:
    dims, dtype = _dims(out), _dtype(out)
    if len(dims) == 4 and dtype == FLOAT and dims[0] in (1, None) and (dims[1] or 0) >= 2:
        return dims[1], False
    if len(dims) == 3 and dtype in INTEGERS and dims[0] in (1, None):
        return None, True  # the class count comes from the class list
    raise ModelError(f"{path}: output {_show([out])} is neither class logits nor a class map; {SUPPORTED}")


def _class_names(path: Path, nc: int | None, classes: ClassList | None, props: Mapping[str, str], *,
                 yolo: bool) -> tuple[str, ...]:
    if classes is not None:
        names, source = read_class_list(classes), "the class list"
    elif "names" in props:
        names, source = parse_names(path, props["names"]), "its `names` metadata"
    elif nc is not None and nc > MAX_CLASSES:
        raise ModelError(f"{path}: its outputs hold {nc} classes, above the {MAX_CLASSES} supported "
                         "(is the file damaged?)")
    elif nc is None:
        raise ConfigError(f"{path}: the model outputs class ids; give its class list "
                          "(a text file, one name per line, or a JSON list)")
    else:
        return tuple(f"class{i}" for i in range(nc))
    if nc is not None and len(names) != nc:
        error = ConfigError if classes is not None else ModelError
        # Ultralytics' nms=True export (1×300×38) reads as a one-class YOLOv5 layout: say why.
        hint = " (a model exported with NMS inside, e.g. Ultralytics' nms=True, is not supported)" if yolo else ""
        raise error(f"{path}: {source} has {len(names)} classes but the outputs hold {nc}{hint}")
    return names


def _head(spec: ModelSpec, frame_size: tuple[int, int], mean: Sequence[float] | None, std: Sequence[float] | None,
          conf: float, iou: float, top_k: int,
          shapes: list[tuple[tuple[int, ...], np.dtype]]) -> InstanceHead | SemanticHead:
    yolo = spec.kind != "semantic"
    m = tuple(float(v) for v in (mean if mean is not None else ((0, 0, 0) if yolo else IMAGENET_MEAN)))
    s = tuple(float(v) for v in (std if std is not None else ((1, 1, 1) if yolo else IMAGENET_STD)))
    if len(m) != 3 or len(s) != 3 or min(s) <= 0:
        raise ConfigError(f"mean {m} / std {s}: expected three values each (RGB), std above 0")
    if not yolo:
        recipe = Preprocess("stretch", m, s)  # type: ignore[arg-type]
        return SemanticHead(spec.path.name, _NetworkInOnnx(), stretch(frame_size, spec.input_size), recipe,
                            spec.classes)
    candidates = shapes[0][0][1 if spec.kind == "yolo-v5" else 2]
    if not (0 <= conf < 1 and 0 < iou <= 1 and 1 <= top_k <= min(1000, candidates)):
        raise ConfigError(f"conf {conf}, iou {iou}, top_k {top_k}: expected 0 <= conf < 1, 0 < iou <= 1 "
                          f"and 1 <= top_k <= {min(1000, candidates)}")
    recipe = Preprocess("letterbox", m, s, pad_value=114)  # type: ignore[arg-type]
    return InstanceHead(spec.path.name, _NetworkInOnnx(), letterbox(frame_size, canvas=spec.input_size), recipe,
                        spec.classes, layout="v5" if spec.kind == "yolo-v5" else "v8", top_k=top_k,
                        conf_threshold=conf, iou_threshold=iou)


def _fixed_input(model: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """A copy whose only input is 1×3×H×W (old exports also list their weights as inputs)."""
    net = onnx.ModelProto()
    net.CopyFrom(model)
    keep = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in _real_inputs(net.graph)]
    del net.graph.input[:]  # weights listed as inputs would become inputs of the spliced graph
    net.graph.input.extend(keep)
    for d, v in zip(net.graph.input[0].type.tensor_type.shape.dim, (1, 3, *spec.input_size)):
        d.Clear()
        d.dim_value = v
    return net


def _output_shapes(net: onnx.ModelProto, spec: ModelSpec) -> list[tuple[tuple[int, ...], np.dtype]]:
    """The outputs' static shapes and dtypes, in ``spec.outputs`` order; run once when the file leaves them open."""
    by_name = {o.name: o for o in net.graph.output}
    dtypes = [onnx.helper.tensor_dtype_to_np_dtype(_dtype(by_name[n])) for n in spec.outputs]
    dims = [_dims(by_name[n]) for n in spec.outputs]
    if not spec.input_size_assumed and all(None not in d for d in dims):
        return [(tuple(n for n in d if n is not None), t) for d, t in zip(dims, dtypes)]
    try:
        session = ort.InferenceSession(net.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.zeros((1, 3, *spec.input_size), dtype=np.float32)
        values = session.run(list(spec.outputs), {spec.input_name: x})
    except Exception as exc:  # ORT raises its own untyped errors
        raise ModelError(f"{spec.path}: ONNX Runtime cannot run it on a 1x3x{spec.input_size[0]}x"
                         f"{spec.input_size[1]} input ({exc})") from exc
    return [(v.shape, t) for v, t in zip(values, dtypes)]


def _splice(spec: ModelSpec, pre: onnx.ModelProto, net: onnx.ModelProto, post: onnx.ModelProto,
            post_inputs: Sequence[str]) -> onnx.ModelProto:
    """pre → the user's network → post, in one model: one opset and IR version, no name clashes."""
    target = max(_opset(m) for m in (pre, net, post))
    try:
        parts = [m if _opset(m) == target else onnx.version_converter.convert_version(m, target)
                 for m in (pre, net, post)]
    except Exception as exc:  # the converter raises bare RuntimeErrors and ValueErrors
        raise ModelError(f"{spec.path}: cannot bring its opset {_opset(net)} and our heads' {_opset(pre)} to "
                         f"one opset {target} ({exc})") from exc
    ir = max(m.ir_version for m in parts)
    for m in parts:
        m.ir_version = ir  # newer IR versions read older graphs unchanged
    pre = onnx.compose.add_prefix(parts[0], "pre/", rename_inputs=False)
    net = onnx.compose.add_prefix(parts[1], "net/")
    post = onnx.compose.add_prefix(parts[2], "post/", rename_outputs=False)
    merged = onnx.compose.merge_models(pre, net, io_map=[("pre/image", "net/" + spec.input_name)])
    io_map = [("net/" + o, "post/" + i) for o, i in zip(spec.outputs, post_inputs)]
    merged = onnx.compose.merge_models(merged, post, io_map=io_map, producer_name="segengine")
    # merge_models checks that the opsets agree but lists each model's imports again: keep one each.
    imports = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in imports.items())
    return merged


def _real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    weights = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _dtype(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type  # 0 (undefined) for a non-tensor or unset type


def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:  # a type number this onnx does not know (a damaged or newer file)
        return f"type{elem_type}"


def _dims(value: onnx.ValueInfoProto) -> Dims:
    shape = value.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim)


def _show(values: Sequence[onnx.ValueInfoProto], limit: int = 6) -> str:
    """'name float 1×?×640' for each value (the first ``limit``, names cut at 60 characters), for messages."""
    shown = ", ".join(f"{str(v.name):.60} {_type_name(_dtype(v))} "
                      + "×".join("?" if d is None else str(d) for d in _dims(v)[:8]) for v in values[:limit])
    return (shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")) or "none"
