"""Static-shape NMS (Cluster-NMS in plain ops) gives what the old NonMaxSuppression graph gave.

The old graph (tests/nms_reference.py) is run on ONNX Runtime and OpenVINO beside the new one,
over random candidates (many classes, ties, clusters of overlapping boxes, fewer valid than K,
none valid) and over the candidates of every frame of the two shared videos.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segengine.backends.probe import cpu_isa, has_bf16
from segengine.geometry import letterbox
from segengine.graph.instances import InstanceDecode
from segengine.graph.nms import ITERATIONS, greedy_nms, suppression
from tests.nms_reference import TRANSLATIONS, nms_mask, old_keep

IOU, CONF, K = 0.45, 0.25, 300
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")


class _New(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return greedy_nms(boxes, classes, scores > CONF, IOU)


class _Old(torch.nn.Module):
    def forward(self, boxes: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return old_keep(boxes, classes, scores, IOU, CONF)


def candidates(seed: int, k: int = K, *, classes: int = 80, valid: int | None = None, grid: bool = True,
               clusters: int = 12, sizes: tuple[float, float] = (8, 200), ties: bool = False,
               ) -> tuple[np.ndarray, ...]:
    """``k`` candidates sorted by descending score as the decode's TopK leaves them (ties in
    index order): boxes jittered around a few objects (so many overlap), scores in steps of
    1/64, ``valid`` of them above the threshold. ``ties``: scores that tie stay tied, else they
    are pulled apart by 1e-6 in rank order (ONNX Runtime's NonMaxSuppression breaks ties in its
    heap's order, which no other NMS repeats). ``grid``: coordinates in 1/16 px, which the old
    class offsets (up to 79 × 7680) represent exactly in float32."""
    rng = np.random.default_rng(seed)
    of = rng.integers(0, clusters, k)  # the object each candidate is about
    centre, size = rng.uniform(0, 640, (clusters, 2))[of], rng.uniform(*sizes, (clusters, 2))[of]
    jitter = rng.normal(0, 0.12, (k, 4)) * np.concatenate([size, size], 1)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1) + jitter
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    if grid:
        boxes = np.round(boxes * 16) / 16
    # Few classes per cluster (as a detector's argmax), and some of every class up to ``classes``.
    cls = (rng.integers(0, classes, clusters)[of] + (rng.random(k) < 0.2)) % classes
    n = k if valid is None else valid
    scores = np.concatenate([np.round(rng.uniform(CONF, 1, n) * 64) / 64 + 1e-3, rng.uniform(0, CONF, k - n)])
    order = np.argsort(-scores, kind="stable")
    if not ties:  # the same order, every score distinct
        scores = scores[order] - np.arange(k) * 1e-6
        order = np.arange(k)
    return (boxes[order].astype(np.float32), cls[order].astype(np.int64), scores[order].astype(np.float32))


def cases() -> list[tuple[np.ndarray, ...]]:
    """Many classes, clusters of overlap, 0 to K valid, one class, two, a box per class."""
    few = [candidates(20 + seed, valid=valid) for seed, valid in enumerate((0, 1, 7, 60, 150))]
    kinds = [candidates(30 + seed, classes=nc, clusters=c) for seed, (nc, c) in enumerate(((1, 3), (2, 40), (80, 80)))]
    return [candidates(seed) for seed in range(12)] + few + kinds


def _export(module: torch.nn.Module, path: Path, k: int = K) -> Path:
    boxes, cls, scores = (torch.from_numpy(a) for a in candidates(0, k))
    torch.onnx.export(module.eval(), (boxes, cls, scores), str(path), dynamo=True, external_data=False,
                      input_names=["boxes", "classes", "scores"], custom_translation_table=TRANSLATIONS)
    return path


class _Runner:
    """One exported NMS on ONNX Runtime and (where installed) OpenVINO in fp32."""

    def __init__(self, path: Path) -> None:
        self.ort = ort.InferenceSession(str(path))
        self.ov = None
        if importlib.util.find_spec("openvino") is not None:
            import openvino as ov

            self.ov = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, case: tuple[np.ndarray, ...], backend: str = "ort") -> np.ndarray:
        feeds = dict(zip(("boxes", "classes", "scores"), case))
        if backend == "ort":
            return self.ort.run(None, feeds)[0]
        assert self.ov is not None
        return next(iter(self.ov(feeds).values()))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[_Runner, _Runner]:
    d = tmp_path_factory.mktemp("nms")
    return _Runner(_export(_New(), d / "new.onnx")), _Runner(_export(_Old(), d / "old.onnx"))


def _fixed_point_after(case: tuple[np.ndarray, ...]) -> int:
    """How many iterations this case needs: the first t with keep_t == keep_t+1."""
    boxes, cls, scores = (torch.from_numpy(a) for a in case)
    s = suppression(boxes, cls, scores > CONF, IOU)
    alive = (scores > CONF).float()
    keep, t = alive, 0
    while True:
        nxt = alive * (keep[None] @ s <= 0)[0].float()
        if torch.equal(nxt, keep):
            return t
        keep, t = nxt, t + 1


def test_new_equals_old_on_onnxruntime(graphs: tuple[_Runner, _Runner]) -> None:
    new, old = graphs
    for case in cases():
        want = old(case)
        assert 0 < want.sum() < K or (case[2] <= CONF).all()
        np.testing.assert_array_equal(new(case), want)
        np.testing.assert_array_equal(_New()(*(torch.from_numpy(a) for a in case)).numpy(), want)
        assert _fixed_point_after(case) < ITERATIONS


@needs_openvino
def test_new_equals_old_on_openvino(graphs: tuple[_Runner, _Runner]) -> None:
    new, old = graphs
    for case in cases():
        want = old(case)
        np.testing.assert_array_equal(new(case, "ov"), want)
        np.testing.assert_array_equal(old(case, "ov"), want)


@needs_openvino
@pytest.mark.skipif(not has_bf16(cpu_isa()), reason="needs a CPU with native bf16 (OpenVINO's bf16 mode)")
def test_openvino_bf16_keeps_the_nms_in_f32(graphs: tuple[_Runner, _Runner], tmp_path: Path) -> None:
    """OpenVINO's bf16 mode lowers a MatMul and the float arithmetic leading to it; the NMS has no
    MatMul, so its IoU stays f32 and its answer is fp32's, as the old NonMaxSuppression's was."""
    import openvino as ov

    _, old = graphs
    compiled = ov.Core().compile_model(str(_export(_New(), tmp_path / "new.onnx")), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "bf16"})
    lowered = [op.get_friendly_name() for op in compiled.get_runtime_model().get_ops()
               if op.get_rt_info()["runtimePrecision"].astype(str) == "bf16"]
    assert not lowered
    for case in cases():
        got = next(iter(compiled(dict(zip(("boxes", "classes", "scores"), case))).values()))
        np.testing.assert_array_equal(got, old(case))


def test_the_old_reference_is_greedy_nms(graphs: tuple[_Runner, _Runner]) -> None:
    """The reference itself: its torch loop and ONNX Runtime's NonMaxSuppression agree."""
    _, old = graphs
    for boxes, cls, scores in cases()[:6]:
        got = nms_mask(*(torch.from_numpy(a) for a in (boxes + cls[:, None] * np.float32(7680), scores)), IOU, CONF)
        np.testing.assert_array_equal(got.numpy(), old((boxes, cls, scores)))


def test_ties_go_to_the_higher_ranked_box(graphs: tuple[_Runner, _Runner]) -> None:
    """Equal scores: the new NMS takes the box TopK ranked first (the lower anchor index), the same
    answer as with the scores pulled apart in that order. ONNX Runtime's NonMaxSuppression orders
    by score alone (a heap), so among ties its order is the heap's; on every tied case tried (900)
    that was the rank order too, on ONNX Runtime and OpenVINO alike."""
    new, old = graphs
    for seed in range(12):
        tied = candidates(40 + seed, valid=None if seed % 2 else 60, ties=True)
        assert (np.diff(tied[2]) == 0).sum() > 20
        untied = (*tied[:2], tied[2] - np.arange(K, dtype=np.float32) * 1e-6)
        got = new(tied)
        np.testing.assert_array_equal(got, old(untied))
        np.testing.assert_array_equal(got, old(tied))
        if old.ov is not None:
            np.testing.assert_array_equal(new(tied, "ov"), old(tied, "ov"))


def test_off_grid_coordinates_differ_only_by_the_old_rounding(graphs: tuple[_Runner, _Runner]) -> None:
    """Off the 1/16 px grid the old class offsets rounded coordinates (to 1/2048 px at class 1, 1/16 px
    at class 79) and the new NMS does not. Every difference is that rounding: the old answer is the
    new NMS's answer on the coordinates the offsets rounded them to."""
    new, old = graphs
    differing = 0
    for seed in range(40):
        boxes, cls, scores = case = candidates(100 + seed, grid=False)
        offset = cls[:, None].astype(np.float32) * np.float32(7680)
        rounded = (boxes + offset) - offset  # exact in float32: the coordinates the old NMS compared
        want = old(case)
        np.testing.assert_array_equal(new((rounded, cls, scores)), want)
        differing += not np.array_equal(new(case), want)
    assert differing <= 10


def _iou(b: torch.Tensor) -> torch.Tensor:
    w = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
    h = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return w * h / (area[:, None] + area[None, :] - w * h)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_the_fp32_answer(graphs: tuple[_Runner, _Runner], dtype: torch.dtype) -> None:
    """The NMS run in float16 keeps exactly the boxes the old fp32 graph keeps, for every class
    (no offsets to overflow), given boxes float16 holds (an fp16 engine's network hands over no
    others) and IoUs not within float16's rounding (~5e-4) of the threshold. bfloat16 (8 bits of
    mantissa, 2-4 px steps at 640 px) only has to stay finite."""
    _, old = graphs
    checked = 0
    for seed in range(60):
        boxes, cls, scores = candidates(200 + seed, valid=40)
        boxes = boxes.astype(np.float16).astype(np.float32)
        b, c, sc = torch.from_numpy(boxes), torch.from_numpy(cls), torch.from_numpy(scores)
        s = suppression(b.to(dtype), c, sc > CONF, IOU)
        assert torch.isfinite(s).all()
        got = greedy_nms(b.to(dtype), c, sc > CONF, IOU)
        assert got.dtype == dtype
        if dtype == torch.float16 and _clear_of_threshold((boxes, cls, scores), 2e-3):
            np.testing.assert_array_equal(got.float().numpy(), old((boxes, cls, scores)))
            checked += 1
    assert checked >= 20 or dtype != torch.float16


def test_class_offsets_overflowed_in_float16() -> None:
    """Why the offsets went: class 9 at x = 500 sits at 69,620, past float16's 65,504."""
    offset = torch.tensor([[500.0, 10.0, 600.0, 50.0]]) + 9 * 7680.0
    assert torch.isinf(offset.half()).any()


def _clear_of_threshold(case: tuple[np.ndarray, ...], margin: float) -> bool:
    """Every IoU between two valid boxes of one class at least ``margin`` from the threshold."""
    v = case[2] > CONF
    boxes, cls = torch.from_numpy(case[0][v]).double(), torch.from_numpy(case[1][v])
    iou = _iou(boxes)[cls[:, None] == cls[None, :]]
    return bool(((iou - IOU).abs() > margin).all())


def assert_static(model: onnx.ModelProto) -> None:
    """No op whose output size depends on the data, and every tensor's shape known once the input's
    is: what TensorRT needs to run the graph without a device-to-host shape copy."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    assert not {n.op_type for n in model.graph.node} & {"NonMaxSuppression", "NonZero", "Loop", "If", "Unique"}
    values = [*model.graph.value_info, *model.graph.output]
    assert len(values) >= len(model.graph.node)
    for value in values:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{value.name}: {dims}"


def test_the_nms_and_the_decode_have_only_static_shapes(tmp_path: Path) -> None:
    assert_static(onnx.load(str(_export(_New(), tmp_path / "nms.onnx"))))
    decode = InstanceDecode(letterbox((540, 960)), 80)
    pred, protos = torch.rand(1, 15120, 117), torch.rand(1, 32, 96, 160)
    path = tmp_path / "decode.onnx"
    torch.onnx.export(decode.eval(), (pred, protos), str(path), dynamo=True, external_data=False)
    assert_static(onnx.load(str(path)))


def test_a_long_chain_needs_more_iterations_and_errs_on_keeping_fewer() -> None:
    """Boxes in a row, each overlapping the next only: greedy keeps every other one, and the
    iteration needs about one step per box to get there. Cut short at an odd count, it keeps a
    subset of greedy's boxes, never a suppressed one."""
    n = 24
    x = torch.arange(n, dtype=torch.float32) * 6
    # 20 px wide, 6 apart: neighbours' IoU 14/26 = 0.54, two apart 8/32 = 0.25.
    boxes = torch.stack([x, torch.zeros(n), x + 20, torch.full((n,), 10.0)], 1)
    cls, valid = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.bool)
    scores = torch.linspace(1, 0.5, n)
    greedy = nms_mask(boxes, scores, IOU, CONF)
    assert torch.equal(greedy_nms(boxes, cls, valid, IOU, iterations=n + 1), greedy)
    short = greedy_nms(boxes, cls, valid, IOU, iterations=ITERATIONS)
    assert not torch.equal(short, greedy) and bool((short <= greedy).all())
