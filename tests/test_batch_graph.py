"""Preset graphs with a dynamic batch axis: every frame of a batch gets, bit for bit, what it gets alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import cv2
import numpy as np
import onnx
import pytest
import torch

from segengine.backends.base import BackendOptions
from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.backends.torch import TorchBackend
from segengine.errors import BackendError
from segengine.graph import cache, prepare
from segengine.graph.compose import build_graph, export_graph
from segengine.graph.spec import GraphSpec, InputSpec
from segengine.models import zoo
from tests.factories import road_spec

SIZE = (216, 384)  # (height, width): small frames, the networks' inputs are as at any size
MAX_BATCH = 4
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")


@pytest.fixture(scope="module")
def frames(shared: Path) -> np.ndarray:
    """Four different real frames (a highway with cars), 4×216×384×3 RGB."""
    with av.open(str(shared / "data" / "videos" / "udacity_vehicledet_test_video.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([cv2.resize(decoded[i], SIZE[::-1], interpolation=cv2.INTER_AREA) for i in (0, 10, 20, 30)])


@pytest.fixture(scope="module")
def road_batch(dirs: zoo.WeightDirs, tmp_path_factory: pytest.TempPathFactory):
    graph = build_graph("road", SIZE, dirs, max_batch=MAX_BATCH)
    return graph, export_graph(graph, tmp_path_factory.mktemp("batch") / "road-b4.onnx")


def _backend(kind: str, graph: torch.nn.Module, path: Path, dirs: zoo.WeightDirs):
    if kind == "torch":
        return TorchBackend(graph, graph.spec(), BackendOptions(device="cpu"))
    spec = GraphSpec.read_file(path)
    if kind == "openvino":
        from segengine.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, spec, BackendOptions(precision="fp32", dirs=dirs))
    return OnnxRuntimeBackend(path, spec)


def test_the_spec_and_the_onnx_say_batches_of_one_to_max(road_batch) -> None:
    graph, path = road_batch
    spec = GraphSpec.read_file(path)
    assert spec.input == InputSpec(SIZE, max_batch=MAX_BATCH, dynamic_batch=True) and spec == graph.spec()
    # Static but for the batch axis: every tensor's shape is known once the batch is (what TensorRT
    # needs), and nothing's size depends on the data.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True, data_prop=True)
    assert not {n.op_type for n in model.graph.node} & {"NonMaxSuppression", "NonZero", "Loop", "If", "Unique"}
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    assert len(values) >= len(model.graph.node)
    batched = 0
    for value in values:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims[1:]), f"{value.name}: {dims}"
        if dims and not dims[0].HasField("dim_value"):
            assert dims[0].dim_param == "batch", f"{value.name}: {dims}"
            batched += 1
    assert batched > 100  # the whole pipeline carries the batch, not only the input


@pytest.mark.parametrize("kind", ["onnxruntime", pytest.param("openvino", marks=needs_openvino), "torch"])
def test_each_row_of_a_batch_equals_the_frame_alone(kind: str, road_batch, frames: np.ndarray,
                                                    dirs: zoo.WeightDirs) -> None:
    backend = _backend(kind, *road_batch, dirs)
    try:
        alone = [backend.infer(frame) for frame in frames]
        assert sum(int((a["scores"][0] > 0).sum()) for a in alone) >= 4  # cars found: rows that mean something
        for order in ([2, 0, 3], [0, 1, 2, 3]):
            out = backend.infer(frames[order])
            for row, i in enumerate(order):
                for name, want in alone[i].items():
                    assert out[name].shape == (len(order), *want.shape[1:]), name
                    assert np.array_equal(out[name][row], want[0]), f"{kind}: frame {i} at row {row}: {name}"
        refused = r"graph road takes 1 to 4 frames per call \(its max batch is 4\), not 5"
        with pytest.raises(BackendError, match=refused):
            backend.infer(np.concatenate([frames, frames[:1]]))
    finally:
        backend.close()


def test_a_batch_is_refused_outside_what_the_graph_takes() -> None:
    spec = road_spec()
    spec.check_batch(1)
    with pytest.raises(BackendError, match=r"takes one frame per call \(its max batch is 1\), not 2"):
        spec.check_batch(2)
    with pytest.raises(BackendError, match="takes exactly 4 frames per call"):  # a static batch of 4
        road_spec(max_batch=4).check_batch(3)
    dynamic = GraphSpec("road", InputSpec((180, 320), max_batch=4, dynamic_batch=True), spec.outputs)
    dynamic.check_batch(3)
    with pytest.raises(BackendError, match="takes 1 to 4 frames per call"):
        dynamic.check_batch(0)


def test_the_cache_key_names_the_batch_only_past_one() -> None:
    one, four = cache.graph_key("road", (540, 960)), cache.graph_key("road", (540, 960), max_batch=4)
    assert one.startswith("road-960x540-") and four.startswith("road-960x540-b4-")
    assert one.rsplit("-", 1)[1] == four.rsplit("-", 1)[1]  # the same code and weights


def test_a_users_model_stays_at_batch_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its network is fixed to batch 1: asked for more, prepare gives the batch-1 graph, and says so."""
    asked: list[tuple] = []

    def custom(model_file: Path, frame_size: tuple[int, int], **kwargs: object) -> Path:
        asked.append((model_file, frame_size, kwargs))
        model = onnx.ModelProto()
        road_spec((540, 960)).write(model)
        onnx.save(model, str(tmp_path / "wrapped.onnx"))
        return tmp_path / "wrapped.onnx"

    monkeypatch.setattr(cache, "cached_custom_graph", custom)
    target = prepare.GraphTarget(model_file=tmp_path / "mine.onnx")
    got = prepare.prepare(target, (540, 960), "onnx", zoo.WeightDirs(cache=tmp_path / "models"), max_batch=8)
    assert got.spec.input.max_batch == 1 and not got.spec.input.dynamic_batch
    assert len(asked) == 1 and "max_batch" not in asked[0][2]

