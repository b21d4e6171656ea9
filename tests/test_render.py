"""Lane fitting, colours, the overlay renderer and the HUD."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segengine.errors import ConfigError
from segengine.geometry import Placement, letterbox, stretch
from segengine.lanes import LaneSmoother, fit_lanes
from segengine.render.base import Renderer
from segengine.render.hud import draw_hud
from segengine.render.overlay import OverlayRenderer
from segengine.render.palette import GROUP_COLOURS, Group, group_of, instance_colour, track_colour
from segengine.types import Frame, FrameResult, Instances, Lanes, SemanticMap

FRAME = (540, 960)
# Two straight lane lines in frame pixels, (x, y) bottom → top, like a highway seen from the ego lane.
LEFT = ((200.0, 530.0), (450.0, 320.0))
RIGHT = ((760.0, 530.0), (510.0, 320.0))


def _to_map(points: np.ndarray, placement: Placement, shape: tuple[int, int]) -> np.ndarray:
    """Frame pixel centres → model-map pixel centres (the inverse of what fit_lanes does)."""
    kx, ky = placement.scale_xy
    (ih, iw) = placement.input_size
    x = ((points[:, 0] + 0.5) * kx + placement.left) * shape[1] / iw - 0.5
    y = ((points[:, 1] + 0.5) * ky + placement.top) * shape[0] / ih - 0.5
    return np.stack([x, y], axis=1)


def _lane_map(placement: Placement, lines, dashed: bool = False) -> SemanticMap:
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
    return SemanticMap(classes, placement, ("background", "lane"))


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
    lanes = fit_lanes(SemanticMap(specks, placement, lane_map.class_names))
    assert len(lanes.polylines) == 2  # dashes merged into one line, specks ignored
    for polyline, truth in zip(lanes.polylines, (LEFT, RIGHT)):  # sorted left to right
        assert polyline.dtype == np.float32 and polyline.shape[1] == 2
        assert np.all(np.diff(polyline[:, 1]) > 0)  # top to bottom
        assert _distance(polyline, truth).max() < 2.5
        assert abs(polyline[0, 1] - truth[1][1]) < 6 and abs(polyline[-1, 1] - truth[0][1]) < 6


def test_fit_lanes_on_an_empty_map() -> None:
    placement = PLACEMENTS["letterbox"]
    assert fit_lanes(SemanticMap(np.zeros(placement.input_size, np.uint8), placement, ("b", "lane"))).polylines == ()


@pytest.fixture(scope="module")
def real_result(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> FrameResult:
    """The lane network on the real solidWhiteRight picture (960×540), through the exported graph."""
    from segengine.backends.onnxruntime import OnnxRuntimeBackend
    from segengine.graph.compose import build_graph, export_graph
    from segengine.results import decode
    from segengine.models import zoo

    image = cv2.imread(str(shared / "data" / "images" / "udacity_lanelines" / "solidWhiteRight.jpg"))[:, :, ::-1]
    image = np.ascontiguousarray(image)
    dirs = zoo.WeightDirs(cache=tmp_path_factory.mktemp("cache"), mirror=shared / "models")
    graph = build_graph("twinlitenet", image.shape[:2], dirs)
    backend = OnnxRuntimeBackend(export_graph(graph, tmp_path_factory.mktemp("g") / "lanes.onnx"))
    return decode(backend.infer(image), backend.description, Frame(image, 0, 0.0))


def test_fit_lanes_on_the_real_frame(real_result: FrameResult) -> None:
    h, w = real_result.frame.size
    lanes = fit_lanes(real_result.lane_mask)
    long = [p for p in lanes.polylines if np.ptp(p[:, 1]) > 0.15 * h]
    assert len(long) >= 2
    for p in lanes.polylines:
        assert (p[:, 1] > h / 2).all() and (p[:, 0] >= 0).all() and (p[:, 0] <= w - 1).all()
    slope = [float(np.polyfit(p[:, 0], p[:, 1], 1)[0]) for p in long]  # dy/dx in image axes
    bottom = [float(p[-1, 0]) for p in long]
    assert any(s < 0 and x < w / 2 for s, x in zip(slope, bottom))  # the left line rises to the right
    assert any(s > 0 and x > w / 2 for s, x in zip(slope, bottom))  # the right line rises to the left
    image = OverlayRenderer().render(FrameResult(real_result.frame, drivable=real_result.drivable, lanes=lanes))
    assert image.shape == real_result.frame.image.shape and (image != real_result.frame.image).any()


def test_lane_smoother_damps_jitter_and_bridges_a_gap() -> None:
    smoother = LaneSmoother(alpha=0.3, patience=1)
    ys = np.linspace(320, 530, 12, dtype=np.float32)
    truth = 700 - 0.9 * (ys - 320)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(30):
        noisy = np.stack([truth + rng.normal(0, 6), ys], axis=1).astype(np.float32)
        (out,) = smoother.update(Lanes((noisy,))).polylines
        errors.append(np.abs(out[:, 0] - truth).mean())
    assert np.mean(errors[10:]) < 3.5  # the input's offset noise has a mean |error| of ~4.8
    assert len(smoother.update(Lanes(())).polylines) == 1  # one missing frame: still shown
    assert len(smoother.update(Lanes(())).polylines) == 0
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
    """Masks that fill each box (at quarter input resolution, like YOLO's prototypes)."""
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
    image = np.full((h, w, 3), 100, np.uint8)
    frame = Frame(image, 3, 0.1)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    result = FrameResult(frame, instances=_instances(size, [box], [1], [5]))
    renderer = OverlayRenderer(show_hud=False, show_labels=False)
    assert isinstance(renderer, Renderer)
    out = renderer.render(result)
    assert (image == 100).all()  # the input is untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    expected = (1 - renderer.alpha) * 100 + renderer.alpha * np.array(track_colour(5))
    assert np.abs(out[h // 2, w // 2].astype(float) - expected).max() <= 2
    assert (out[0, 0] == 100).all() and (out[-1, -1] == 100).all()  # nothing drawn far from the box
    # Every option on, odd sizes included: no crash, still the frame's shape.
    assert OverlayRenderer().render(result).shape == image.shape


def test_renderer_rejects_a_bad_opacity() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        OverlayRenderer(alpha=1.5)


def test_renderer_handles_no_instances_and_no_maps() -> None:
    image = np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    frame = Frame(image, 0, 0.0)
    plain = OverlayRenderer(show_hud=False)
    assert (plain.render(FrameResult(frame)) == image).all()
    empty = FrameResult(frame, instances=_instances((120, 200), [], [], []))
    assert (plain.render(empty) == image).all()
    assert OverlayRenderer().render(empty).shape == image.shape  # the HUD alone


def test_renderer_marks_pedestrians_and_draws_maps() -> None:
    h, w = 240, 320
    image = np.full((h, w, 3), 100, np.uint8)
    placement = stretch((h, w), (120, 160))
    drivable = np.zeros((120, 160), np.uint8)
    drivable[80:] = 1
    lanes = Lanes((np.array([[100, 130], [40, 230]], np.float32),))
    person = _instances((h, w), [(200, 40, 260, 150)], [0], [-1])  # untracked: its group's colour
    result = FrameResult(Frame(image, 0, 0.0), instances=person, lanes=lanes,
                         drivable=SemanticMap(drivable, placement, ("background", "drivable")))
    renderer = OverlayRenderer(show_hud=False)
    out = renderer.render(result)
    red = np.array(GROUP_COLOURS[Group.PEDESTRIAN])
    assert (np.abs(out[40:46, 200:206].astype(int) - red).max(axis=2) <= 10).any()  # warning bracket corner
    tint = (1 - renderer.drivable_alpha) * 100 + renderer.drivable_alpha * np.array(renderer.drivable_colour)
    assert np.abs(out[220, 300].astype(float) - tint).max() <= 2
    assert (np.abs(out[180, 70].astype(int) - np.array(renderer.lane_colour)).max() <= 10)  # on the lane line


def test_renderer_tints_a_semantic_map_and_reads_hud_values() -> None:
    h, w = 90, 160
    image = np.full((h, w, 3), 100, np.uint8)
    classes = np.zeros((64, 128), np.uint8)  # 0 = road everywhere
    semantic = SemanticMap(classes, stretch((h, w), (64, 128)), ("road", "sidewalk", "background"))
    result = FrameResult(Frame(image, 42, 1.0), semantic=semantic, timings={"fps": 24.0, "latency": 0.04})
    out = OverlayRenderer(show_hud=False).render(result)
    assert (out[-1, -1] != 100).any()
    with_hud = OverlayRenderer().render(result)
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
        lanes = fit_lanes(SemanticMap(classes, placement, ("background", "lane")))
        for line in lanes.polylines:
            assert (line >= 0).all() and (line[:, 0] <= 319).all() and (line[:, 1] <= 179).all()


def test_fit_lanes_regression_map_from_a_live_run() -> None:
    """A real lane map (synthetic scene, 320×180) on which a refit once left an empty piece."""
    classes = (cv2.imread(str(Path(__file__).parent / "data" / "lane_map_regression.png"), cv2.IMREAD_GRAYSCALE) > 0)
    lanes = fit_lanes(SemanticMap(classes.astype(np.uint8), stretch((180, 320), (360, 640)), ("background", "lane")))
    assert len(lanes.polylines) >= 1
