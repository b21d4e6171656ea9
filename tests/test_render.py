"""Lane fitting, colours, the layer renderer and its drawers, and the HUD."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from segengine.errors import ConfigError
from segengine.geometry import Placement, letterbox, stretch
from segengine.layers import (
    BinaryMap,
    InstanceDrawer,
    Instances,
    LaneDrawer,
    LaneFollower,
    LaneLines,
    MapTint,
    SemanticMap,
    SemanticTint,
    decode_layers,
)
from segengine.layers.lane_fit import LaneSmoother, fit_lanes
from segengine.models import zoo
from segengine.render.base import Renderer
from segengine.render.compose import LayerRenderer, default_drawers
from segengine.render.hud import Hud, draw_hud
from segengine.render.palette import GROUP_COLOURS, Group, group_of, instance_colour, track_colour
from segengine.types import Frame, FrameResult
from tests.factories import class_map, frame, result

FRAME = (540, 960)
# Two straight lane lines in frame pixels, (x, y) bottom → top, like a highway seen from the ego lane.
LEFT = ((200.0, 530.0), (450.0, 320.0))
RIGHT = ((760.0, 530.0), (510.0, 320.0))
LANE_CLASSES = ("background", "lane")


def _to_map(points: np.ndarray, placement: Placement, shape: tuple[int, int]) -> np.ndarray:
    """Frame pixel centres → model-map pixel centres (the inverse of what fit_lanes does)."""
    kx, ky = placement.scale_xy
    (ih, iw) = placement.input_size
    x = ((points[:, 0] + 0.5) * kx + placement.left) * shape[1] / iw - 0.5
    y = ((points[:, 1] + 0.5) * ky + placement.top) * shape[0] / ih - 0.5
    return np.stack([x, y], axis=1)


def _lane_map(placement: Placement, lines, dashed: bool = False) -> LaneLines:
    """A lane layer as the graph gives it: the map drawn, no polylines fitted yet."""
    shape = placement.input_size
    classes = np.zeros(shape, np.uint8)
    for line in lines:
        (x0, y0), (x1, y1) = _to_map(np.array(line), placement, shape)
        pieces = 6 if dashed else 1
        for k in range(pieces):  # dashes: 6 marks with gaps as long as themselves
            a, b = (2 * k / (2 * pieces - 1), (2 * k + 1) / (2 * pieces - 1)) if dashed else (0.0, 1.0)
            p = (round(x0 + a * (x1 - x0)), round(y0 + a * (y1 - y0)))
            q = (round(x0 + b * (x1 - x0)), round(y0 + b * (y1 - y0)))
            cv2.line(classes, p, q, 1, thickness=3)
    return LaneLines(classes, placement, LANE_CLASSES)


def _distance(points: np.ndarray, line) -> np.ndarray:
    (x0, y0), (x1, y1) = line
    d = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
    rel = points - np.array([x0, y0])
    return np.abs(rel[:, 0] * d[1] - rel[:, 1] * d[0])


PLACEMENTS = {"stretch": stretch(FRAME, (360, 640)), "letterbox": letterbox(FRAME, long_side=640)}


@pytest.mark.parametrize("name", PLACEMENTS)
@pytest.mark.parametrize("dashed", [False, True])
def test_fit_lanes_recovers_two_straight_lines(name: str, dashed: bool) -> None:
    placement = PLACEMENTS[name]
    lane_map = _lane_map(placement, [LEFT, RIGHT], dashed)
    specks = lane_map.classes.copy()
    specks[50:52, 50:52] = specks[300:302, 320:323] = 1  # noise the fit must ignore
    polylines = fit_lanes(specks, placement)
    assert isinstance(polylines, tuple) and len(polylines) == 2  # dashes merged into one line, specks ignored
    for polyline, truth in zip(polylines, (LEFT, RIGHT)):  # sorted left to right
        assert polyline.dtype == np.float32 and polyline.shape[1] == 2
        assert np.all(np.diff(polyline[:, 1]) > 0)  # top to bottom
        assert _distance(polyline, truth).max() < 2.5
        assert abs(polyline[0, 1] - truth[1][1]) < 6 and abs(polyline[-1, 1] - truth[0][1]) < 6


def test_fit_lanes_on_an_empty_map() -> None:
    placement = PLACEMENTS["letterbox"]
    assert fit_lanes(np.zeros(placement.input_size, np.uint8), placement) == ()


def test_lane_follower_fits_and_smooths_a_new_layer() -> None:
    placement = PLACEMENTS["stretch"]
    raw = _lane_map(placement, [LEFT, RIGHT])
    follower = LaneFollower()
    fitted = follower.update(raw, 0.0)
    assert raw.polylines is None  # the input is left alone: the graph's layer is never fitted in place
    assert isinstance(fitted, LaneLines) and fitted is not raw and fitted.classes is raw.classes
    assert len(fitted.polylines) == 2
    for polyline, truth in zip(fitted.polylines, (LEFT, RIGHT)):
        assert _distance(polyline, truth).max() < 2.5
    empty = replace(raw, classes=np.zeros_like(raw.classes))
    assert len(follower.update(empty, 0.04).polylines) == 2  # a missing frame: still shown (patience)
    follower.reset()
    assert follower.update(empty, 0.08).polylines == ()
    assert fitted.to_json()["polylines"][0][0] == [round(float(v), 2) for v in fitted.polylines[0][0]]
    assert raw.to_json()["polylines"] is None


@pytest.fixture(scope="module")
def real_result(shared: Path, dirs: zoo.WeightDirs) -> FrameResult:
    """The road preset (lanes, drivable area, instances) on the real solidWhiteRight picture (960×540),
    through the exported graph."""
    from segengine.backends.onnxruntime import OnnxRuntimeBackend
    from segengine.graph.prepare import GraphTarget, prepare

    image = cv2.imread(str(shared / "data" / "images" / "udacity_lanelines" / "solidWhiteRight.jpg"))[:, :, ::-1]
    image = np.ascontiguousarray(image)
    prepared = prepare(GraphTarget("road"), image.shape[:2], "onnx", dirs)
    backend = OnnxRuntimeBackend(prepared.graph, prepared.spec)
    try:
        layers = decode_layers(backend.infer(image), prepared.spec)
    finally:
        backend.close()
    return FrameResult(Frame(image, 0, 0.0), layers)


def test_fit_lanes_on_the_real_frame(real_result: FrameResult) -> None:
    h, w = real_result.frame.size
    lane_map = real_result.lanes
    assert lane_map is not None and lane_map.polylines is None  # straight from the graph: not fitted
    polylines = fit_lanes(lane_map.classes, lane_map.placement)
    long = [p for p in polylines if np.ptp(p[:, 1]) > 0.15 * h]
    assert len(long) >= 2
    for p in polylines:
        assert (p[:, 1] > h / 2).all() and (p[:, 0] >= 0).all() and (p[:, 0] <= w - 1).all()
    slope = [float(np.polyfit(p[:, 0], p[:, 1], 1)[0]) for p in long]  # dy/dx in image axes
    bottom = [float(p[-1, 0]) for p in long]
    assert any(s < 0 and x < w / 2 for s, x in zip(slope, bottom))  # the left line rises to the right
    assert any(s > 0 and x > w / 2 for s, x in zip(slope, bottom))  # the right line rises to the left
    assert real_result.drivable is not None
    lanes = replace(lane_map, polylines=polylines)
    image = LayerRenderer().render(FrameResult(real_result.frame, {"drivable": real_result.drivable, "lanes": lanes}))
    assert image.shape == real_result.frame.image.shape and (image != real_result.frame.image).any()


def test_lane_smoother_damps_jitter_and_bridges_a_gap() -> None:
    smoother = LaneSmoother(alpha=0.3, patience=1)
    ys = np.linspace(320, 530, 12, dtype=np.float32)
    truth = 700 - 0.9 * (ys - 320)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(30):
        noisy = np.stack([truth + rng.normal(0, 6), ys], axis=1).astype(np.float32)
        (out,) = smoother.update((noisy,))
        errors.append(np.abs(out[:, 0] - truth).mean())
    assert np.mean(errors[10:]) < 3.5  # the input's offset noise has a mean |error| of ~4.8
    assert len(smoother.update(())) == 1  # one missing frame: still shown
    assert len(smoother.update(())) == 0
    smoother.reset()


def test_palette_is_stable_and_distinct() -> None:
    assert track_colour(1) == (25, 92, 255) and track_colour(7) == track_colour(7)  # same in every run
    colours = np.array([track_colour(i) for i in range(51)], float)
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=2) + np.eye(51) * 1e9
    assert gaps.min() > 20
    assert (colours.max(axis=1) >= 180).all()  # vivid, never muddy
    assert group_of("person") is Group.PEDESTRIAN and group_of("motorcycle") is Group.RIDER
    assert group_of("bicycle") is Group.RIDER and group_of("dog") is Group.OBSTACLE
    assert {group_of(n) for n in ("car", "bus", "truck", "train")} == {Group.VEHICLE}
    assert instance_colour(-1, "person") == GROUP_COLOURS[Group.PEDESTRIAN]
    assert instance_colour(3, "person") == track_colour(3)
    assert len(set(GROUP_COLOURS.values())) == 4


def _instances(size: tuple[int, int], boxes: list[tuple[int, int, int, int]], classes: list[int],
               tracks: list[int]) -> Instances:
    """Masks that fill each box, at quarter input resolution like YOLO's prototypes, over a *letterboxed*
    input (``factories.box_instances`` stretches; the renderer must place both right)."""
    placement = letterbox(size, long_side=320)
    ih, iw = placement.input_size
    masks = np.zeros((len(boxes), ih // 4, iw // 4), np.uint8)
    if boxes:
        grid = _to_map(np.array(boxes, float).reshape(-1, 2), placement, masks.shape[1:]).reshape(-1, 4)
        for m, (x0, y0, x1, y1) in zip(masks, np.round(grid).astype(int)):
            m[y0:y1 + 1, x0:x1 + 1] = 255
    return Instances(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9, np.float32),
                     np.array(classes, np.int32), masks, placement, ("person", "car"),
                     np.array(tracks, np.int64))


@pytest.mark.parametrize("size", [(540, 960), (101, 173), (17, 23)])
def test_renderer_tints_masks_and_leaves_the_frame_alone(size: tuple[int, int]) -> None:
    h, w = size
    still = frame(h, w, index=3, pts=0.1, value=100)
    image = still.image
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    res = result({"instances": _instances(size, [box], [1], [5])}, image=still)
    drawer = InstanceDrawer(labels=False)
    renderer = LayerRenderer([drawer])  # no HUD, no labels
    assert isinstance(renderer, Renderer)
    out = renderer.render(res)
    assert (image == 100).all()  # the input is untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    expected = (1 - drawer.alpha) * 100 + drawer.alpha * np.array(track_colour(5))
    assert np.abs(out[h // 2, w // 2].astype(float) - expected).max() <= 2
    assert (out[0, 0] == 100).all() and (out[-1, -1] == 100).all()  # nothing drawn far from the box
    # Every option on, odd sizes included: no crash, still the frame's shape.
    assert LayerRenderer().render(res).shape == image.shape
    assert LayerRenderer([InstanceDrawer(boxes=True), Hud()]).render(res).shape == image.shape


@pytest.mark.parametrize("make", [lambda: InstanceDrawer(alpha=1.5), lambda: MapTint(alpha=-0.1),
                                  lambda: SemanticTint(alpha=2.0)])
def test_drawers_reject_a_bad_opacity(make) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        make()


def test_renderer_handles_no_instances_and_no_maps() -> None:
    image = np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    still = Frame(image, 0, 0.0)
    plain = LayerRenderer(default_drawers(hud=False))
    assert (plain.render(FrameResult(still)) == image).all()
    empty = result({"instances": _instances((120, 200), [], [], [])}, image=still)
    assert (plain.render(empty) == image).all()
    hud_only = LayerRenderer().render(empty)  # the HUD alone
    assert hud_only.shape == image.shape and (hud_only != image).any()


def _everything(h: int = 240, w: int = 320) -> FrameResult:
    """A result with a layer of every kind (and HUD values): semantic, drivable, fitted lanes, instances."""
    placement = stretch((h, w), (120, 160))
    semantic = class_map(SemanticMap, frame_size=(h, w), grid=(120, 160), classes=("road", "sidewalk", "background"),
                         fill={1: (slice(0, 40), slice(None)), 2: (slice(40, 80), slice(None))})
    drivable = class_map(BinaryMap, frame_size=(h, w), grid=(120, 160))
    lanes = LaneLines(np.zeros((120, 160), np.uint8), placement, LANE_CLASSES,
                      polylines=(np.array([[100, 130], [40, 230]], np.float32),))
    people = _instances((h, w), [(200, 40, 260, 150), (20, 150, 90, 220)], [0, 1], [-1, 4])
    image = np.random.default_rng(2).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return result({"semantic": semantic, "drivable": drivable, "lanes": lanes, "instances": people},
                  image=Frame(image, 7, 0.28), fps=24.0, latency=0.04)


def test_default_renderer_is_the_default_drawers_in_z_order() -> None:
    res = _everything()
    drawers = default_drawers()
    assert [type(d) for d in drawers] == [SemanticTint, MapTint, LaneDrawer, InstanceDrawer, Hud]
    assert [type(d) for d in default_drawers(hud=False)] == [SemanticTint, MapTint, LaneDrawer, InstanceDrawer]
    out = LayerRenderer().render(res)
    assert (out != res.frame.image).any()
    np.testing.assert_array_equal(out, LayerRenderer(drawers).render(res))
    explicit = [SemanticTint(), MapTint(), LaneDrawer(), InstanceDrawer(), Hud()]
    np.testing.assert_array_equal(out, LayerRenderer(explicit).render(res))
    # Without the HUD only its corner differs.
    bare = LayerRenderer(default_drawers(hud=False)).render(res)
    assert (bare[:20, :20] != out[:20, :20]).any() and (bare[-40:, -40:] == out[-40:, -40:]).all()
    assert LayerRenderer([]).render(res).tobytes() == res.frame.image.tobytes()  # no drawers: the frame


def test_drawers_without_the_hud_leave_an_empty_result_untouched() -> None:
    image = np.random.default_rng(3).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    still = Frame(image, 5, 0.2)
    renderer = LayerRenderer(default_drawers(hud=False))
    out = renderer.render(result(image=still, fps=30.0, latency=0.01))
    assert out is not image and (out == image).all()
    # Layers of every kind with nothing in them draw nothing either.
    none = {"semantic": class_map(SemanticMap, frame_size=(90, 160), grid=(45, 80), classes=("background", "road"),
                                  fill={0: (slice(None), slice(None))}),
            "drivable": class_map(BinaryMap, frame_size=(90, 160), grid=(45, 80), fill={0: (slice(None), slice(None))}),
            "lanes": LaneLines(np.zeros((45, 80), np.uint8), stretch((90, 160), (45, 80)), LANE_CLASSES, polylines=()),
            "unfitted": LaneLines(np.zeros((45, 80), np.uint8), stretch((90, 160), (45, 80)), LANE_CLASSES),
            "instances": _instances((90, 160), [], [], [])}
    assert (renderer.render(result(none, image=still)) == image).all()
    assert (image == still.image).all()


def test_renderer_marks_pedestrians_and_draws_maps() -> None:
    h, w = 240, 320
    image = np.full((h, w, 3), 100, np.uint8)
    placement = stretch((h, w), (120, 160))
    drivable = np.zeros((120, 160), np.uint8)
    drivable[80:] = 1
    lanes = LaneLines(np.zeros((120, 160), np.uint8), placement, LANE_CLASSES,
                      polylines=(np.array([[100, 130], [40, 230]], np.float32),))
    person = _instances((h, w), [(200, 40, 260, 150)], [0], [-1])  # untracked: its group's colour
    res = result({"drivable": BinaryMap(drivable, placement, ("background", "drivable")), "lanes": lanes,
                  "instances": person}, image=Frame(image, 0, 0.0))
    assert res.drivable is res.layers["drivable"] and res.lanes is lanes and res.instances is person
    tint, lane = MapTint(), LaneDrawer()
    out = LayerRenderer(default_drawers(hud=False)).render(res)
    red = np.array(GROUP_COLOURS[Group.PEDESTRIAN])
    assert (np.abs(out[40:46, 200:206].astype(int) - red).max(axis=2) <= 10).any()  # warning bracket corner
    expected = (1 - tint.alpha) * 100 + tint.alpha * np.array(tint.colour)
    assert np.abs(out[220, 300].astype(float) - expected).max() <= 2
    assert (np.abs(out[180, 70].astype(int) - np.array(lane.colour)).max() <= 10)  # on the lane line
    # Unfitted lanes: the raw map is tinted instead, so nothing is hidden.
    raw = np.zeros((120, 160), np.uint8)
    raw[:, 20:24] = 1
    unfitted = LaneLines(raw, placement, LANE_CLASSES)
    out = LayerRenderer([LaneDrawer()]).render(result({"lanes": unfitted}, image=Frame(image, 0, 0.0)))
    expected = (1 - lane.map_alpha) * 100 + lane.map_alpha * np.array(lane.colour)
    assert np.abs(out[120, 44].astype(float) - expected).max() <= 2 and (out[120, 200] == 100).all()


def test_renderer_tints_a_semantic_map_and_reads_hud_values() -> None:
    h, w = 90, 160
    image = np.full((h, w, 3), 100, np.uint8)
    classes = np.zeros((64, 128), np.uint8)  # 0 = road everywhere
    semantic = SemanticMap(classes, stretch((h, w), (64, 128)), ("road", "sidewalk", "background"))
    res = result({"semantic": semantic}, image=Frame(image, 42, 1.0), fps=24.0, latency=0.04)
    out = LayerRenderer(default_drawers(hud=False)).render(res)
    assert (out[-1, -1] != 100).any()
    with_hud = LayerRenderer().render(res)
    assert (with_hud[:20, :20] != out[:20, :20]).any() and (with_hud[-1, -1] == out[-1, -1]).all()


def test_hud_draws_in_the_top_left_corner() -> None:
    image = np.full((480, 640, 3), 200, np.uint8)
    assert draw_hud(image, 29.97, 35.2, 120, {"lanes": "2"}, instances=4) is image
    changed = (image != 200).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any() and ys.max() < 240 and xs.max() < 320
    short = np.full((480, 640, 3), 200, np.uint8)
    draw_hud(short, None, None, 120)
    assert np.nonzero((short != 200).any(axis=2))[0].max() < ys.max()  # fewer rows, smaller panel
    blank = np.full((480, 640, 3), 200, np.uint8)
    draw_hud(blank, None, None, None)
    assert (blank == 200).all()


def test_fit_lanes_survives_arbitrary_maps() -> None:
    """Noise, specks, curves and short strokes: never an exception, always polylines inside the frame."""
    rng = np.random.default_rng(7)
    placement = stretch((180, 320), (360, 640))
    for _ in range(150):
        classes = np.zeros((360, 640), np.uint8)
        for _ in range(rng.integers(0, 6)):
            pts = rng.uniform([0, 0], [640, 360], (rng.integers(2, 5), 2)).astype(np.int32)
            cv2.polylines(classes, [pts], False, 1, int(rng.integers(1, 6)))
        classes[rng.random((360, 640)) < rng.uniform(0, 0.02)] = 1
        for line in fit_lanes(classes, placement):
            assert (line >= 0).all() and (line[:, 0] <= 319).all() and (line[:, 1] <= 179).all()


def test_fit_lanes_regression_map_from_a_live_run() -> None:
    """A real lane map (synthetic scene, 320×180) on which a refit once left an empty piece."""
    classes = (cv2.imread(str(Path(__file__).parent / "data" / "lane_map_regression.png"), cv2.IMREAD_GRAYSCALE) > 0)
    assert len(fit_lanes(classes.astype(np.uint8), stretch((180, 320), (360, 640)))) >= 1
