"""The in-graph pre-processing reproduces upstream's cv2 recipes (references.json) on the real images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segengine.geometry import letterbox, stretch
from segengine.graph.compose import export_module
from segengine.graph.preprocess import FramePreprocess, OpenCVLinearResize
from segengine.models.card import Preprocess

IMAGENET = Preprocess(resize="stretch", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _rgb(shared: Path, key: str) -> np.ndarray:
    refs = json.loads((shared / "reference" / "references.json").read_text())
    return cv2.cvtColor(cv2.imread(str(shared / refs[key]["image"])), cv2.COLOR_BGR2RGB)


def _run(module: FramePreprocess, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(image)[None]).numpy()


@pytest.mark.parametrize(
    ("key", "npz", "make", "recipe"),
    [
        ("twinlitenet", "twinlitenet_solidWhiteCurve.npz", lambda s: stretch(s, (360, 640)),
         Preprocess(resize="stretch")),
        ("espnetv2_cityscapes", "espnetv2_city_test1.npz", lambda s: stretch(s, (512, 1024)), IMAGENET),
        ("yolov5s_seg", "yolov5s_seg_test3.npz", lambda s: letterbox(s, canvas=(640, 640)),
         Preprocess(resize="letterbox")),
    ],
)
def test_matches_upstream_recipe(shared: Path, key, npz, make, recipe) -> None:
    image = _rgb(shared, key)
    expected = np.load(shared / "reference" / npz)["input"]
    got = _run(FramePreprocess(make(image.shape[:2]), recipe), image)
    assert got.shape == expected.shape
    # Bit-exact resize: what remains is float rounding in the normalisation.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(360, 480), (720, 1280), (541, 961), (37, 1000)])
@pytest.mark.parametrize("target", [(512, 1024), (384, 640), (360, 640), (217, 333), (1080, 1920)])
def test_resize_is_bit_exact_with_opencv(size: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size) + sum(target))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = cv2.resize(image, target[::-1], interpolation=cv2.INTER_LINEAR)
    got = OpenCVLinearResize(size, target)(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_array_equal(got, expected)


def _export_resize(tmp_path: Path, image: np.ndarray, target: tuple[int, int]) -> Path:
    path = tmp_path / "resize.onnx"
    export_module(OpenCVLinearResize(image.shape[:2], target), (torch.from_numpy(image)[None],), path,
                  ("frame",), ("resized",))
    return path


def test_resize_is_bit_exact_on_onnxruntime(tmp_path: Path, shared: Path) -> None:
    image = _rgb(shared, "yolov5s_seg")
    path = _export_resize(tmp_path, image, (384, 640))
    got = ort.InferenceSession(str(path)).run(None, {"frame": image[None]})[0][0]
    np.testing.assert_array_equal(got, cv2.resize(image, (640, 384), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("size", [(541, 961), (540, 960), (1080, 1920)])  # any ratio; 3:2; 3:1
def test_resize_is_bit_exact_on_openvino(tmp_path: Path, precision: str, size: tuple[int, int]) -> None:
    ov = pytest.importorskip("openvino")
    image = np.random.default_rng(3).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = _export_resize(tmp_path, image, (360, 640))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    got = compiled({0: image[None]})[0][0]
    np.testing.assert_array_equal(got, cv2.resize(image, (640, 360), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize(("size", "divs", "gathers"), [((541, 961), 6, 4), ((540, 960), 3, 4), ((1080, 1920), 2, 2)])
def test_resize_graph_is_integer_gathers_and_divisions(tmp_path: Path, size: tuple[int, int], divs: int,
                                                       gathers: int) -> None:
    """Integer Gathers and Divs only (no float round trips, no transposes); at 3:2 every weight is a multiple of
    16 across (no Div there) and of 64 down (one Div per tap); at 3:1 each pass uses one tap only."""
    image = np.random.default_rng(4).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = _export_resize(tmp_path, image, (360, 640))
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["Gather"] == gathers and ops["Div"] == divs, ops
    assert not {"GatherND", "Transpose", "Floor", "Sign", "Abs"} & set(ops), ops
    assert ops["Cast"] == 2  # uint8 → float32 → int32, once each
    assert_frame_cast_to_float(onnx.load(str(path)))
    got = ort.InferenceSession(str(path)).run(None, {"frame": image[None]})[0][0]
    np.testing.assert_array_equal(got, cv2.resize(image, (640, 360), interpolation=cv2.INTER_LINEAR))


def assert_frame_cast_to_float(model: onnx.ModelProto) -> None:
    """The uint8 frame goes into nothing but a Cast to float32, and that comes first: TensorRT
    converts uint8 to float32/float16 only (10.0-10.5 may refuse the graph otherwise)."""
    frame = model.graph.input[0]
    assert frame.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    users = [n for n in model.graph.node if frame.name in n.input]
    assert model.graph.node[0] in users and users
    for node in users:
        assert node.op_type == "Cast", node.op_type
        assert next(a.i for a in node.attribute if a.name == "to") == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("frame_size", [(540, 960), (360, 640)])  # resized, already the model's size
def test_the_frame_is_cast_to_float_first(tmp_path: Path, frame_size: tuple[int, int]) -> None:
    image = np.random.default_rng(5).integers(0, 256, (*frame_size, 3), dtype=np.uint8)
    module = FramePreprocess(stretch(frame_size, (360, 640)), Preprocess(resize="stretch"))
    path = tmp_path / "pre.onnx"
    export_module(module, (torch.from_numpy(image)[None],), path, ("frame",), ("x",))
    model = onnx.load(str(path))
    assert_frame_cast_to_float(model)
    got = ort.InferenceSession(str(path)).run(None, {"frame": image[None]})[0]
    np.testing.assert_array_equal(got, _run(module, image))


def test_letterbox_placement() -> None:
    square = letterbox((720, 1280), canvas=(640, 640))
    assert (square.resized, square.top, square.left) == ((360, 640), 140, 0)
    wide = letterbox((540, 960))  # 16:9 → no compute spent on padding beyond the stride
    assert wide.input_size == (384, 640) and wide.resized == (360, 640) and wide.top == 12
    tall = letterbox((1080, 607))
    assert tall.input_size[0] == 640 and tall.input_size[1] % 32 == 0 and tall.left >= 0
