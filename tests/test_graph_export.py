"""Preset graphs: built, exported to ONNX, run by ONNX Runtime, equal to the torch graph, self-describing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from segengine.errors import BackendError, ConfigError
from segengine.geometry import letterbox
from segengine.graph.compose import build_graph, export_graph
from segengine.graph.instances import InstanceDecode
from segengine.graph.readout import masks_to_frame
from segengine.graph.spec import GraphSpec
from segengine.models import zoo
from tests.factories import onnx_backend
from tests.test_graph_nms import assert_static
from tests.test_graph_preprocess import assert_frame_cast_to_float


@pytest.fixture(scope="module")
def road_file(dirs: zoo.WeightDirs, highway_frame: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    graph = build_graph("road", highway_frame.shape[:2], dirs)
    return graph, export_graph(graph, tmp_path_factory.mktemp("g") / "road.onnx")


@pytest.fixture(scope="module")
def road(road_file):
    graph, path = road_file
    return graph, onnx_backend(path)


def test_the_road_graph_has_static_shapes_and_casts_the_frame_to_float(road_file) -> None:
    """What TensorRT needs to run it without a shape copy to the host (no NonMaxSuppression or
    NonZero, every shape known from the input's) and to accept the uint8 frame at all."""
    model = onnx.load(str(road_file[1]))
    assert_static(model)
    assert_frame_cast_to_float(model)


def test_road_graph_on_onnxruntime_equals_torch(road, highway_frame: np.ndarray) -> None:
    graph, backend = road
    out = backend.infer(highway_frame)
    with torch.no_grad():
        expected = dict(zip(graph.output_names, (t.numpy() for t in graph(torch.from_numpy(highway_frame)[None]))))
    assert list(out) == ["drivable", "lanes", "boxes", "scores", "classes", "masks"]
    for name in ("drivable", "lanes"):
        assert out[name].shape == (1, 360, 640) and out[name].dtype == np.uint8
        assert (out[name] != expected[name]).mean() < 1e-3
    np.testing.assert_array_equal(out["classes"], expected["classes"])
    np.testing.assert_allclose(out["boxes"], expected["boxes"], atol=0.05)
    np.testing.assert_allclose(out["scores"], expected["scores"], atol=1e-4)
    assert np.abs(out["masks"].astype(int) - expected["masks"]).max() <= 1
    assert out["masks"].shape == (1, 100, 96, 160)  # 640×384 input for 16:9: no wasted padding


def test_road_graph_finds_the_cars_and_the_road(road, highway_frame: np.ndarray) -> None:
    _, backend = road
    out = backend.infer(highway_frame)
    valid = out["scores"][0] > 0
    cars = out["classes"][0][valid] == zoo.card("yolov5s-seg").classes.index("car")
    boxes = out["boxes"][0][valid][cars]
    assert len(boxes) >= 2 and (out["scores"][0][valid][cars] > 0.8).sum() >= 2
    assert (boxes[:, 1] > 360).all() and (boxes[:, [0, 2]] <= 1280).all()  # on the road, in highway_frame pixels
    # Padding rows carry nothing.
    assert (out["classes"][0][~valid] == -1).all() and not out["masks"][0][~valid].any()
    assert not out["boxes"][0][~valid].any()
    # Each mask lies inside its box, at highway_frame resolution.
    masks = masks_to_frame(out["masks"][0][valid][cars], backend.spec.output("instances").placement)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        ys, xs = np.nonzero(mask)
        assert mask.sum() > 0.3 * (x2 - x1) * (y2 - y1)
        assert xs.min() >= x1 - 2 and xs.max() <= x2 + 2 and ys.min() >= y1 - 2 and ys.max() <= y2 + 2
    # The lower middle of a highway highway_frame is drivable.
    assert out["drivable"][0][250:320, 260:380].mean() > 0.95  # the ego lane, above the bonnet
    assert out["drivable"][0][:150].mean() < 0.01  # the sky is not


def test_the_spec_travels_in_the_onnx(road) -> None:
    graph, backend = road
    spec = backend.spec
    assert spec == graph.spec() and spec.frame_size == (720, 1280) and spec.input.name == "frame"
    assert [(o.name, o.kind) for o in spec.outputs] == [("drivable", "binary_map"), ("lanes", "lane_lines"),
                                                        ("instances", "instances")]
    assert spec.tensor_names == tuple(backend.output_names)
    assert spec.output("instances").classes[2] == "car" and spec.output("instances").extras["top_k"] == 100
    assert spec.output("instances").placement.input_size == (384, 640)
    assert spec.output("drivable").placement.input_size == (360, 640)


def test_street_adds_a_semantic_map(dirs: zoo.WeightDirs) -> None:
    graph = build_graph("street", (360, 480), dirs)
    assert graph.output_names[-1] == "semantic"
    with torch.no_grad():
        semantic = graph(torch.zeros(1, 360, 480, 3, dtype=torch.uint8))[-1]
    assert semantic.shape == (1, 512, 1024) and semantic.dtype == torch.uint8


def test_bad_sizes_names_and_files(road, dirs: zoo.WeightDirs, tmp_path: Path) -> None:
    from segengine.backends.onnxruntime import OnnxRuntimeBackend

    graph, _ = road
    with pytest.raises(ConfigError, match="out of range"):
        build_graph("road", (8, 8), dirs)
    with pytest.raises(ConfigError, match="unknown preset or model"):
        build_graph("highway", (720, 1280), dirs)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(ConfigError, match="junk.onnx: not a readable ONNX file"):
        GraphSpec.read_file(junk)
    with pytest.raises(BackendError, match="junk.onnx"):
        OnnxRuntimeBackend(junk, graph.spec())


def test_v8_layout_decodes_like_v5() -> None:
    """YOLOv8/11-seg heads (no objectness, channels first) decode to the same instances."""
    rng = np.random.default_rng(0)
    n, nc = 300, 3
    xy = rng.uniform(50, 500, (n, 2))
    v5 = np.concatenate([xy, rng.uniform(20, 120, (n, 2)), np.ones((n, 1)), rng.uniform(0, 1, (n, nc)),
                         rng.normal(0, 1, (n, 32))], 1).astype(np.float32)[None]
    v8 = np.delete(v5, 4, axis=2).transpose(0, 2, 1).copy()
    protos = torch.from_numpy(rng.normal(0, 1, (1, 32, 160, 160)).astype(np.float32))
    place = letterbox((640, 640))
    a = InstanceDecode(place, nc, layout="v5")(torch.from_numpy(v5), protos)
    b = InstanceDecode(place, nc, layout="v8")(torch.from_numpy(v8), protos)
    assert (a[1] > 0).sum() > 5
    for x, y in zip(a, b):
        assert torch.equal(x, y)
