"""Bring-your-own ONNX models: made from our own networks, spliced into segengine graphs, equal to the presets."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch

from segengine.errors import ConfigError, ModelError
from segengine.geometry import letterbox
from segengine.graph.compose import SegmentationGraph, build_graph, export_raw
from segengine.graph.custom import export_custom_graph, inspect_onnx
from segengine.graph.heads import InstanceHead
from segengine.graph.spec import GraphSpec
from segengine.models import zoo
from tests.factories import onnx_backend

YOLO = zoo.card("yolov5s-seg")
ESPNET = zoo.card("espnetv2-cityscapes")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("custom")


def _run(graph: torch.nn.Module, names: tuple[str, ...], highway_frame: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return dict(zip(names, (t.numpy() for t in graph(torch.from_numpy(highway_frame)[None]))))


@pytest.fixture(scope="module")
def v5_file(dirs: zoo.WeightDirs, tmp: Path) -> Path:
    """`segengine export yolov5s-seg --raw`, with the `names` metadata an Ultralytics export carries."""
    path = export_raw("yolov5s-seg", tmp / "yolov5s-seg.onnx", dirs)
    model = onnx.load(str(path))
    oh.set_model_props(model, {"names": str(dict(enumerate(YOLO.classes))), "stride": "32"})
    onnx.save(model, str(tmp / "named.onnx"))
    return tmp / "named.onnx"


@pytest.fixture(scope="module")
def v5_out(v5_file: Path, highway_frame: np.ndarray, tmp: Path) -> tuple[dict[str, np.ndarray], GraphSpec]:
    backend = onnx_backend(export_custom_graph(v5_file, highway_frame.shape[:2], tmp / "graph-v5.onnx"))
    return backend.infer(highway_frame), backend.spec


def test_v5_layout_is_read_from_shapes_and_metadata(v5_file: Path, tmp: Path) -> None:
    spec = inspect_onnx(v5_file)
    assert (spec.kind, spec.num_classes, spec.input_size, spec.input_size_assumed) == ("yolo-v5", 80, (640, 640), False)
    assert spec.classes == YOLO.classes
    bare = inspect_onnx(tmp / "yolov5s-seg.onnx")  # no metadata: numbered classes
    assert bare.classes[:2] == ("class0", "class1") and len(bare.classes) == 80


def test_v5_custom_graph_equals_the_builtin_head(v5_out, dirs: zoo.WeightDirs, highway_frame: np.ndarray) -> None:
    out, spec = v5_out
    # Our own instance head on the raw model's square canvas, run in torch.
    place = letterbox(highway_frame.shape[:2], canvas=YOLO.input_size)
    head = InstanceHead("yolov5s-seg", zoo.load("yolov5s-seg", dirs=dirs), place, YOLO.preprocess, YOLO.classes)
    expected = _run(SegmentationGraph([head], highway_frame.shape[:2], "ref").eval(), head.outputs, highway_frame)
    assert list(out) == ["boxes", "scores", "classes", "masks"]
    np.testing.assert_array_equal(out["classes"], expected["classes"])
    np.testing.assert_allclose(out["boxes"], expected["boxes"], atol=0.05)
    np.testing.assert_allclose(out["scores"], expected["scores"], atol=1e-4)
    assert np.abs(out["masks"].astype(int) - expected["masks"]).max() <= 1
    # The spec has the presets' form, made by the same code.
    reference = SegmentationGraph([head], highway_frame.shape[:2], "ref").spec()
    assert spec.frame_size == (720, 1280) and spec.name == "named.onnx"
    assert spec.outputs == (replace(reference.output("instances"), model="named.onnx"),)


def test_v5_custom_graph_finds_the_presets_cars(v5_out, dirs: zoo.WeightDirs, highway_frame: np.ndarray) -> None:
    """The preset letterboxes to 640×384, the raw model to 640×640: the same cars, boxes within 2 px."""
    out, _ = v5_out
    preset = build_graph("yolov5s-seg", highway_frame.shape[:2], dirs)
    expected = _run(preset, preset.output_names, highway_frame)
    car = YOLO.classes.index("car")
    sure = (expected["scores"][0] > 0.5) & (expected["classes"][0] == car)
    assert sure.sum() >= 2
    found = out["boxes"][0][(out["scores"][0] > 0.25) & (out["classes"][0] == car)]
    for box in expected["boxes"][0][sure]:
        assert np.abs(found - box).max(axis=1).min() < 2, f"no custom box near the preset's car {box}"


class _AsYolov8(torch.nn.Module):
    """Our YOLOv5 network with YOLOv8's output layout: objectness folded into the classes, channels first."""

    def __init__(self, net: torch.nn.Module, nc: int) -> None:
        super().__init__()
        self.net, self.nc = net, nc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, protos = self.net(x)
        scores = pred[..., 4:5] * pred[..., 5:5 + self.nc]
        return torch.cat([pred[..., :4], scores, pred[..., 5 + self.nc:]], dim=2).transpose(1, 2), protos


def test_v8_layout_gives_the_same_detections(v5_out, dirs: zoo.WeightDirs, highway_frame: np.ndarray,
                                             tmp: Path) -> None:
    path = tmp / "v8.onnx"
    wrapper = _AsYolov8(zoo.load("yolov5s-seg", dirs=dirs), len(YOLO.classes)).eval()
    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Opset 17, below our exporter's: the splice has to bring the model up to the heads' opset.
        torch.onnx.export(wrapper, (torch.zeros(1, 3, 640, 640),), str(path), dynamo=True, external_data=False,
                          opset_version=17, input_names=["images"], output_names=["output0", "output1"])
    classes = tmp / "coco.json"
    classes.write_text(json.dumps(list(YOLO.classes)))
    spec = inspect_onnx(path, classes)
    assert (spec.kind, spec.num_classes, spec.classes) == ("yolo-v8", 80, YOLO.classes)
    backend = onnx_backend(export_custom_graph(path, highway_frame.shape[:2], tmp / "graph-v8.onnx", classes=classes))
    out, (expected, _) = backend.infer(highway_frame), v5_out
    np.testing.assert_array_equal(out["classes"], expected["classes"])
    np.testing.assert_allclose(out["boxes"], expected["boxes"], atol=0.05)
    np.testing.assert_allclose(out["scores"], expected["scores"], atol=1e-4)
    assert np.abs(out["masks"].astype(int) - expected["masks"]).max() <= 1
    assert backend.spec.output("instances").classes == YOLO.classes


def test_semantic_model_gives_the_presets_map(dirs: zoo.WeightDirs, highway_frame: np.ndarray, tmp: Path) -> None:
    raw = export_raw("espnetv2-cityscapes", tmp / "espnet.onnx", dirs)
    classes = tmp / "cityscapes.txt"
    classes.write_text("\n".join(ESPNET.classes) + "\n")
    spec = inspect_onnx(raw, classes)
    assert (spec.kind, spec.num_classes, spec.classes, spec.input_size) == ("semantic", 20, ESPNET.classes, (512, 1024))
    backend = onnx_backend(export_custom_graph(raw, highway_frame.shape[:2], tmp / "graph-sem.onnx", classes=classes))
    out = backend.infer(highway_frame)
    preset = build_graph("espnetv2-cityscapes", highway_frame.shape[:2], dirs)
    expected = _run(preset, preset.output_names, highway_frame)
    assert list(out) == ["semantic"] and out["semantic"].dtype == np.uint8
    assert out["semantic"].shape == expected["semantic"].shape == (1, 512, 1024)
    assert (out["semantic"] != expected["semantic"]).mean() < 1e-3
    reference = preset.spec().output("semantic")
    assert backend.spec.output("semantic") == replace(reference, model="espnet.onnx")


def _tiny(path: Path, input_shape: list[int | str], nodes: list[onnx.NodeProto],
          output: onnx.ValueInfoProto) -> Path:
    """An opset-13 model, x → 1×1 conv to 4 channels (c) → ``nodes``, its weight also an input as old exports have."""
    weight = oh.make_tensor("w", onnx.TensorProto.FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12).tolist())
    inputs = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
              for n, s in (("x", input_shape), ("w", [4, 3, 1, 1]))]
    graph = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["c"]), *nodes], "tiny", inputs, [output], [weight])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]), str(path))
    return path


def test_dynamic_class_id_model_needs_a_class_list(tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, "h", "w"])
    path = _tiny(tmp / "ids.onnx", [1, 3, "h", "w"], [oh.make_node("ArgMax", ["c"], ["ids"], axis=1, keepdims=0)], ids)
    with pytest.raises(ConfigError, match="ids.onnx.*class list"):
        inspect_onnx(path)
    with caplog.at_level(logging.WARNING):
        spec = inspect_onnx(path, ["road", "car", "sky", "tree"])
    assert spec.input_size == (640, 640) and spec.input_size_assumed and spec.class_ids
    assert "dynamic" in caplog.text
    backend = onnx_backend(export_custom_graph(path, (90, 160), tmp / "graph-ids.onnx",
                                                     classes=["road", "car", "sky", "tree"]))
    out = backend.infer(np.full((90, 160, 3), 200, dtype=np.uint8))["semantic"]
    assert out.shape == (1, 640, 640) and out.dtype == np.uint8 and out.max() < 4
    assert backend.spec.output("semantic").classes == ("road", "car", "sky", "tree")
    spliced = onnx.load(str(tmp / "graph-ids.onnx"))  # one input, one opset: the user's brought up to ours
    assert [i.name for i in spliced.graph.input] == ["frame"] and len(spliced.opset_import) == 1


def test_unsupported_models_say_what_and_why(tmp: Path, v5_file: Path) -> None:
    flat = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])
    vector = _tiny(tmp / "vector.onnx", [1, 3, 8, 8], [oh.make_node("Flatten", ["c"], ["y"])], flat)
    with pytest.raises(ModelError, match=r"vector\.onnx: output y float 1×10 .*supported"):
        inspect_onnx(vector)
    junk = tmp / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="junk.onnx: not a readable ONNX file"):
        inspect_onnx(junk)
    with pytest.raises(ModelError, match="missing.onnx: no such ONNX file"):
        inspect_onnx(tmp / "missing.onnx")
    with pytest.raises(ConfigError, match="3 classes but the outputs hold 80"):
        inspect_onnx(v5_file, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="already a segengine graph"):
        inspect_onnx(tmp / "graph-v5.onnx")
    with pytest.raises(ConfigError, match="out of range"):
        export_custom_graph(v5_file, (8, 8), tmp / "never.onnx")
