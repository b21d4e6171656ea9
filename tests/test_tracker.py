"""The mask-aware tracker: Kalman in real time, association, identities, smoothing, long runs."""

from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np
import pytest

from segengine.errors import ConfigError
from segengine.geometry import letterbox
from segengine.layers import Instances
from segengine.tracking.association import BoxGrid, mask_iou
from segengine.tracking.base import Detections, Tracker
from segengine.tracking.mask_tracker import MaskTracker, TrackerConfig

GRID = (96, 160)  # the prototype grid of a 640×384 input
FPS = 25


def _dets(boxes, scores=None, classes=None, masks=None) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    scores = np.full(n, 0.9, np.float32) if scores is None else np.asarray(scores, np.float32)
    classes = np.zeros(n, np.int32) if classes is None else np.asarray(classes, np.int32)
    return Detections(boxes, scores, classes, None if masks is None else np.asarray(masks))


def _rect(box, shape=GRID) -> np.ndarray:
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def _ids(tracker: MaskTracker, dets: Detections, t: float) -> dict[int, int]:
    """detection index → track id, for the rows reported this frame."""
    out = tracker.step(dets, t)
    return dict(zip(out.detection.tolist(), out.track_ids.tolist()))




# -- the tracker ----------------------------------------------------------------------------------


def _bar(x0: float, y0: float, size: int, slope: int) -> np.ndarray:
    """A diagonal bar ("\\" for slope -1, "/" for +1) filling a size×size box on the grid."""
    yy, xx = np.mgrid[:GRID[0], :GRID[1]]
    u, v = xx - round(x0), yy - round(y0)
    inside = (u >= 0) & (u < size) & (v >= 0) & (v < size)
    return inside & (np.abs(u - v if slope < 0 else u + v - (size - 1)) < 4)


def _crossing(config: TrackerConfig, seed: int = 0) -> dict[str, set[int]]:
    """Two same-class objects walk towards each other, stand in the very same box for 10 frames
    (boxes tell them apart no more), and walk on. Detections come in random order."""
    def x_at(f: int, start: float, end: float) -> float:
        mid = (start + end) / 2
        return start + (mid - start) * min(f, 15) / 15 + (end - mid) * max(f - 25, 0) / 15

    rng = np.random.default_rng(seed)
    tracker, seen = MaskTracker(config), {"\\": set(), "/": set()}
    for f in range(41):
        objects = [("\\", x_at(f, 20, 110), -1), ("/", x_at(f, 110, 20), 1)]
        rng.shuffle(objects)
        boxes = [np.array([x, 30, x + 30, 60]) + rng.normal(0, 0.7, 4) for _, x, _ in objects]
        masks = np.stack([_bar(x, 30, 30, slope) for _, x, slope in objects])
        for d, track in _ids(tracker, _dets(boxes, masks=masks), f / FPS).items():
            seen[objects[d][0]].add(track)
    return seen


def test_crossing_objects_of_one_class_keep_their_ids() -> None:
    for seed in range(3):
        seen = _crossing(TrackerConfig(), seed)
        assert len(seen["\\"]) == 1 and len(seen["/"]) == 1 and seen["\\"] != seen["/"], seen
    # The scene is a real test: on boxes alone the identities swap.
    seen = _crossing(TrackerConfig(mask_weight=0.0))
    assert len(seen["\\"]) > 1 or seen["\\"] == seen["/"]


def _walker(t: float) -> list[float]:
    x = 20 + 60 * t  # pixels per second, in frame coordinates
    return [x, 40, x + 24, 88]


@pytest.mark.parametrize("with_masks", [False, True])
def test_an_object_occluded_for_a_second_is_recovered_with_its_id(with_masks: bool) -> None:
    grid = BoxGrid(0.5, 0.5)  # masks at half the boxes' resolution
    tracker = MaskTracker(grid=grid)
    ids = {}
    for f in range(100):
        t = f / FPS
        visible = not 40 <= f < 65  # 25 frames at 25 fps: one second without a detection
        boxes = [_walker(t)] if visible else np.zeros((0, 4))
        masks = np.stack([_rect(b) for b in grid.apply(np.array(boxes))]) if with_masks and visible else None
        found = _ids(tracker, _dets(boxes, masks=masks), t)
        if visible:
            ids[f] = found.get(0)
        else:
            assert found == {}
    assert set(ids.values()) == {1}
    assert tracker.num_tracks == 1


def _behind_a_pillar(config: TrackerConfig, fps: float = 30) -> list[tuple[int, ...]]:
    """A person walks behind a pillar: its box shrinks to the visible part, it is hidden for
    0.4 s, and it comes out on the far side, growing again. Ids reported per visible frame."""
    tracker, ids, w, pillar = MaskTracker(config), [], 30.0, (150.0, 200.0)
    for f in range(90):
        t = f / fps
        x0 = 40 + 100 * t
        left, right = (x0, min(x0 + w, pillar[0])), (max(x0, pillar[1]), x0 + w)
        x0, x1 = max(left, right, key=lambda s: s[1] - s[0])
        visible = x1 - x0 >= 0.35 * w
        out = tracker.step(_dets([[x0, 100, x1, 170]] if visible else np.zeros((0, 4))), t)
        if visible:
            ids.append(tuple(out.track_ids.tolist()))
    return ids


def test_an_object_coming_out_from_behind_a_pillar_keeps_its_id() -> None:
    assert set(_behind_a_pillar(TrackerConfig())) == {(1,)}
    # Its prediction lags the real object (the box shrank as it went in): plain IoU loses it.
    assert (2,) in set(_behind_a_pillar(TrackerConfig(lost_buffer=0.0)))


def test_a_track_lost_longer_than_max_lost_is_dropped() -> None:
    tracker = MaskTracker(TrackerConfig(max_lost=1.5))
    assert _ids(tracker, _dets([_walker(0)]), 0.0) == {0: 1}
    for f in range(1, 37):  # empty frames still advance time
        tracker.step(_dets(np.zeros((0, 4))), f / FPS)
    assert tracker.num_tracks == 1
    for f in range(40, 45):
        tracker.step(_dets(np.zeros((0, 4))), f / FPS)
    assert tracker.num_tracks == 0
    assert _ids(tracker, _dets([_walker(45 / FPS)]), 45 / FPS) == {}  # a new, tentative track
    assert _ids(tracker, _dets([_walker(46 / FPS)]), 46 / FPS) == {0: 2}


def test_low_confidence_detections_continue_tracks_but_never_start_them() -> None:
    tracker = MaskTracker()
    ids = []
    for f in range(40):
        t = f / FPS
        score = 0.3 if 10 <= f < 30 else 0.9  # blurred or half hidden for 20 frames
        ghost = [130, 10, 150, 30]  # a weak detection elsewhere, all along
        found = _ids(tracker, _dets([_walker(t), ghost], scores=[score, 0.3]), t)
        assert 1 not in found
        ids.append(found.get(0))
    assert set(ids) == {1}
    assert tracker.num_tracks == 1


def test_one_frame_false_positives_never_become_reported_tracks() -> None:
    rng = np.random.default_rng(2)
    tracker = MaskTracker()
    most = 0
    for f in range(300):
        t = f / FPS
        x, y = rng.uniform(0, 900, 2)
        boxes = [_walker(t / 10)] + ([[x, y, x + 30, y + 30]] if f else [])  # clutter from frame 1 on
        found = _ids(tracker, _dets(boxes, scores=[0.9, 0.95][:len(boxes)],
                                    classes=[0, rng.integers(3)][:len(boxes)]), t)
        assert found == {0: 1}
        most = max(most, tracker.num_tracks)
    assert most <= 2  # each tentative track is dropped at its first miss


def test_ids_are_per_tracker_and_repeated_times_are_harmless() -> None:
    a, b = MaskTracker(), MaskTracker()
    assert _ids(a, _dets([[0, 0, 10, 10]]), 0.0) == {0: 1}
    assert _ids(b, _dets([[50, 50, 60, 60], [0, 0, 10, 10]]), 0.0) == {0: 1, 1: 2}
    assert _ids(a, _dets([[0, 0, 10, 10], [100, 0, 110, 10]]), 0.04) == {0: 1}
    assert _ids(a, _dets([[0, 0, 10, 10], [100, 0, 110, 10]]), 0.04) == {0: 1, 1: 2}  # same time again
    assert _ids(a, _dets([[0, 0, 10, 10]]), 0.02) == {0: 1}  # time going back: a zero step
    a.reset()
    assert _ids(a, _dets([[70, 70, 80, 80]]), 5.0) == {0: 1}


def test_boxes_off_the_mask_grid_are_refused() -> None:
    """Frame-pixel boxes with 96×160 masks and no grid would move every mask to the wrong place."""
    tracker = MaskTracker()
    with pytest.raises(ConfigError, match="grid=BoxGrid"):
        tracker.step(_dets([[400, 300, 520, 420]], masks=_rect((66, 50, 86, 70))[None]), 0.0)
    ok = MaskTracker(grid=BoxGrid(1 / 6, 1 / 6))
    assert _ids(ok, _dets([[400, 300, 520, 420]], masks=_rect((66, 50, 86, 70))[None]), 0.0) == {0: 1}


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="smoothing"):
        TrackerConfig(smoothing=1.0)
    with pytest.raises(ConfigError, match="low_score"):
        TrackerConfig(low_score=0.6, high_score=0.5)
    with pytest.raises(ConfigError, match="min_hits"):
        TrackerConfig(min_hits=0)


def test_instances_adapter_leaves_its_input_alone() -> None:
    placement = letterbox((540, 960))  # masks on the 96×160 grid; boxes in frame pixels
    tracker = MaskTracker()
    assert isinstance(tracker, Tracker)
    for f in range(3):
        x = 100 + 12 * f
        masks = np.zeros((2, *GRID), np.uint8)
        masks[0, 20:40, 20 + 2 * f:40 + 2 * f] = 220
        masks[1, 60:80, 100:130] = 180
        inst = Instances(np.array([[x, 72, x + 120, 192], [600, 312, 780, 432]], np.float32),
                         np.array([0.9, 0.2], np.float32), np.array([2, 0], np.int32), masks, placement,
                         ("person", "bicycle", "car"))
        before = {k: getattr(inst, k).copy() for k in ("boxes", "scores", "class_ids", "masks", "track_ids")}
        out = tracker.update(inst, f / FPS)
        for k, v in before.items():
            assert np.array_equal(getattr(inst, k), v), k
        assert len(out) == 1 and out.track_ids.tolist() == [1]  # the low-score one never starts a track
        assert out.masks.dtype == np.uint8 and out.masks.shape == (1, *GRID)
        assert out.track_ids.dtype == np.int64 and out.placement is placement
        assert np.array_equal(out.boxes, inst.boxes[:1])
        assert mask_iou(out.masks >= 128, masks[:1])[0, 0] > 0.8  # the smoothed mask is on its object


def test_instances_adapter_survives_a_change_of_frame_size() -> None:
    tracker = MaskTracker()
    for f, (size, grid) in enumerate([((540, 960), GRID)] * 2 + [((720, 1280), (96, 160)), ((360, 640), (48, 80))]):
        placement = letterbox(size) if grid == GRID else letterbox(size, long_side=320)
        masks = np.zeros((1, *grid), np.uint8)
        masks[0, 10:20, 10:20] = 200
        inst = Instances(np.array([[10, 10, 60, 60]], np.float32), np.array([0.9], np.float32),
                         np.array([2], np.int32), masks, placement, ("a", "b", "car"))
        out = tracker.update(inst, f / FPS)
        assert out.masks.shape[1:] == grid and out.track_ids.tolist() == [1]


def _flicker(masks: list[np.ndarray]) -> float:
    """Mean 1 − IoU between consecutive binary masks."""
    binary = np.stack(masks) >= 128
    return float(np.mean([1 - mask_iou(p[None], q[None])[0, 0] for p, q in zip(binary, binary[1:])]))


def test_smoothing_halves_the_flicker_of_a_still_object() -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:GRID[0], :GRID[1]]
    r = np.hypot(yy - 48, xx - 80)
    noisy = []
    for _ in range(100):  # a disk whose edge the network gets a little wrong every frame
        edge = 15 + rng.normal(0, 0.7) + rng.normal(0, 1.0, GRID)
        m = r < edge
        ys, xs = np.nonzero(m)
        noisy.append((m, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
    results = {}
    for alpha in (0.0, 0.7):
        tracker = MaskTracker(TrackerConfig(smoothing=alpha))
        results[alpha] = [tracker.step(_dets([box], masks=m[None]), f / FPS).masks[0]
                          for f, (m, box) in enumerate(noisy)]
    raw, smooth = _flicker(results[0.0]), _flicker(results[0.7])
    assert raw > 0.05 and smooth <= 0.5 * raw, (raw, smooth)
    truth = (r < 15)[None]
    accuracy = {a: mask_iou(np.stack(m) >= 128, truth).mean() for a, m in results.items()}
    assert accuracy[0.7] > accuracy[0.0]  # and the average is closer to the object than the noise


def test_smoothing_follows_a_moving_object_without_smearing() -> None:
    tracker = MaskTracker(TrackerConfig(smoothing=0.7))
    for f in range(40):
        x = 10 + 3 * f  # 3 cells a frame: a previous mask blended in place would trail a cell behind
        mask = _rect((x, 30, x + 20, 50))
        out = tracker.step(_dets([[x, 30, x + 20, 50]], masks=mask[None]), f / FPS)
        iou = mask_iou(out.masks >= 128, mask[None])[0, 0]
        # The first frames lag while the filter learns the velocity; then the average moves with it.
        assert iou > (0.8 if f < 6 else 0.99), (f, iou)


def _median_step(tracker: MaskTracker, frames: list[Detections]) -> float:
    times = []
    for f, dets in enumerate(frames):
        start = time.perf_counter()
        tracker.step(dets, f / FPS)
        times.append(time.perf_counter() - start)
    return float(np.median(times[5:]))


def test_a_step_is_fast() -> None:
    rng = np.random.default_rng(4)
    corners = rng.uniform([0, 0], [130, 70], (10, 2))
    frames, masked = [], []
    for f in range(60):
        boxes = np.concatenate([corners + 0.5 * f, corners + 0.5 * f + 20], 1)
        masks = np.stack([_rect(b) for b in boxes])
        frames.append(_dets(boxes))
        masked.append(_dets(boxes, masks=masks))
    plain, with_masks = _median_step(MaskTracker(), frames), _median_step(MaskTracker(), masked)
    assert plain < 1e-3 and with_masks < 10e-3, (plain, with_masks)  # about 0.1 and 1 ms here


def _traffic(frames: int, seed: int) -> list[Detections]:
    """A loop of a quiet road: two lanes, each with a car now and then (0–2 detections a frame),
    crossing in a few seconds, with scores that sometimes dip and detections that sometimes drop."""
    rng = np.random.default_rng(seed)
    lanes: list[list[list[float]]] = [[], []]
    for lane, y in enumerate((20.0, 60.0)):
        f = int(rng.integers(0, 30))
        while f < frames:
            length, speed = int(rng.integers(20, 120)), rng.uniform(0.5, 2.0) * (1 if lane else -1)
            x0 = 0.0 if lane else 140.0
            for k in range(min(length, frames - f)):
                lanes[lane].append([f + k, x0 + speed * k, y])
            f += length + int(rng.integers(5, 120))  # mostly gaps longer than max_lost: a new car
    rows: list[list[tuple[list[float], float]]] = [[] for _ in range(frames)]
    for lane in lanes:
        for f, x, y in lane:
            if rng.random() > 0.05:  # missed detections
                rows[int(f)].append(([x, y, x + 20, y + 12], float(rng.choice([0.9, 0.8, 0.3]))))
    return [_dets([b for b, _ in r] or np.zeros((0, 4)), [s for _, s in r]) for r in rows]


@pytest.mark.integration  # a soak: 10^6 frames, about 100 s
def test_a_long_run_holds_constant_memory() -> None:
    """10⁶ frames (11 hours at 25 fps) of cars coming and going, on the real per-frame path.

    tracemalloc slows every allocation several times over, so it traces two windows of
    10 000 frames, one ending at frame 10⁵ and one at 10⁶: their peaks must match and what a
    window leaves allocated must stay tiny. In between, sys.getallocatedblocks counts every
    live Python object for free: a leak of one array a thousand frames would show.
    """
    loop = _traffic(1000, seed=5)
    tracker = MaskTracker()
    window, most, stats = 10_000, 0, {}
    start = time.perf_counter()
    f = 0
    for end in (100_000, 1_000_000):
        while f < end - window:
            tracker.step(loop[f % 1000], f / FPS)
            most = max(most, tracker.num_tracks)
            f += 1
        blocks = sys.getallocatedblocks()
        tracemalloc.start()
        while f < end:
            tracker.step(loop[f % 1000], f / FPS)
            f += 1
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats[end] = (blocks, current, peak)
    elapsed = time.perf_counter() - start
    (blocks1, kept1, peak1), (blocks2, kept2, peak2) = stats[100_000], stats[1_000_000]
    print(f"\n10⁶ frames in {elapsed:.1f} s; peaks {peak1} / {peak2} B; left {kept1} / {kept2} B; "
          f"blocks {blocks1} → {blocks2}; most tracks {most}")
    assert abs(peak2 - peak1) < 100_000 and peak2 < 200_000
    assert kept2 < 20_000
    assert blocks2 - blocks1 < 500
    assert most <= 6
    t = f / FPS
    tracker.step(_dets([[70, 40, 90, 52]]), t)
    newest = tracker.step(_dets([[70, 40, 90, 52]]), t + 1 / FPS).track_ids[0]
    assert newest > 10_000  # thousands of cars came and went
