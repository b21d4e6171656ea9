"""The tracker's parts: the Kalman filter over timestamps, IoU and mask IoU, gated assignment."""

from __future__ import annotations

import time

import numpy as np

from segengine.geometry import letterbox
from segengine.tracking.association import BoxGrid, assign, box_iou, buffered_iou, mask_iou, move_mask, similarity
from segengine.tracking.kalman import BoxKalman, cxcywh_to_xyxy
from segengine.tracking.mask_tracker import MaskTracker
from tests.test_tracker import GRID, _dets, _ids, _rect

# -- Kalman ---------------------------------------------------------------------------------------


def _truth(t: float) -> np.ndarray:
    """A box moving and growing at constant rates (cx, cy, w, h per second)."""
    return cxcywh_to_xyxy(np.array([[100 + 40 * t, 50 - 10 * t, 30 + 6 * t, 60 + 12 * t]]))


def test_kalman_predicts_a_constant_velocity_box_from_irregular_samples() -> None:
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.01, 0.12, 40))  # 8 to 100 fps, jittering
    kf = BoxKalman()
    kf.add(_truth(0.0))
    last = 0.0
    for t in times:
        kf.predict(t - last)
        kf.update(np.array([0]), _truth(t))
        last = t
    assert np.abs(kf.boxes() - _truth(last)).max() < 0.05
    assert np.allclose(kf.velocity, [[40, -10, 6, 12]], atol=0.5)
    before = kf.variance.copy()
    kf.predict(0.5)  # a 0.5 s gap: a dozen frames dropped
    assert np.abs(kf.boxes() - _truth(last + 0.5)).max() < 0.5
    assert (kf.variance > before).all()  # the gap is uncertain, so the gate can be met further away


def test_kalman_equals_the_full_8x8_filter() -> None:
    """The block-diagonal rows give exactly what the textbook filter gives on the same model."""
    kf = BoxKalman()
    box = np.array([[10, 20, 50, 100.0]])
    kf.add(box)
    m, p = kf.x[0].reshape(5, 4)[:2].ravel(), np.diag(np.concatenate([kf.x[0, 8:12], kf.x[0, 16:20]]))
    eye, h = np.eye(4), np.hstack([np.eye(4), np.zeros((4, 4))])
    rng = np.random.default_rng(7)
    for dt in rng.uniform(0.01, 0.3, 12):
        s2 = (0.5 * (m[2] + m[3])) ** 2
        f = np.block([[eye, dt * eye], [0 * eye, eye]])
        q = s2 * np.block([[(kf.q_pos * dt + kf.q_vel * dt ** 3 / 3) * eye, kf.q_vel * dt ** 2 / 2 * eye],
                           [kf.q_vel * dt ** 2 / 2 * eye, kf.q_vel * dt * eye]])
        m, p = f @ m, f @ p @ f.T + q
        z = np.array([30 + 100 * dt, 60, 40, 80]) + rng.normal(0, 2, 4)  # (cx, cy, w, h)
        gain = p @ h.T @ np.linalg.inv(h @ p @ h.T + kf.r * (0.5 * (m[2] + m[3])) ** 2 * eye)
        m, p = m + gain @ (z - h @ m), (np.eye(8) - gain @ h) @ p
        kf.predict(float(dt))
        kf.update(np.array([0]), cxcywh_to_xyxy(z))
        assert np.allclose(kf.mean[0], m[:4]) and np.allclose(kf.velocity[0], m[4:])
        assert np.allclose(kf.x[0, 8:20], np.concatenate([np.diag(p[:4, :4]), np.diag(p[:4, 4:]), np.diag(p[4:, 4:])]))


def test_kalman_steps_add_up_and_repeated_times_change_nothing() -> None:
    a, b = BoxKalman(), BoxKalman()
    for kf in (a, b):
        kf.add(np.array([[0, 0, 20, 40.0], [50, 50, 60, 70]]))
        kf.update(np.array([0, 1]), np.array([[2, 1, 22, 41.0], [51, 50, 61, 70]]))
    a.predict(0.5)
    for _ in range(5):
        b.predict(0.1)
    assert np.allclose(a.x, b.x)  # sizes constant: splitting a gap is exact
    before = b.x.copy()
    b.predict(0.0)
    b.predict(-0.2)
    assert np.array_equal(b.x, before)
    b.keep(np.array([False, True]))
    assert len(b) == 1 and np.allclose(b.mean[0, :2], [56, 60], atol=1)


# -- association ----------------------------------------------------------------------------------


def test_mask_iou_is_exact_on_known_masks() -> None:
    a = np.stack([_rect((0, 0, 10, 10)), _rect((100, 50, 120, 90)), np.zeros(GRID, bool)])
    b = np.stack([_rect((5, 0, 15, 10)), _rect((100, 50, 120, 90)), _rect((0, 0, 10, 5))])
    iou = mask_iou(a, b)
    expected = np.array([[50 / 150, 0, 50 / 100], [0, 1, 0], [0, 0, 0]])
    assert np.array_equal(iou, expected)
    assert np.array_equal(mask_iou(a.astype(np.uint8) * 200, b.astype(np.uint8) * 130), expected)
    rng = np.random.default_rng(1)  # and against a brute-force count on random masks
    x, y = rng.random((20, *GRID)) < 0.3, rng.random((20, *GRID)) < 0.6
    brute = [[(p & q).sum() / (p | q).sum() for q in y] for p in x]
    assert np.allclose(mask_iou(x, y), brute, rtol=0, atol=1e-12)
    start = time.perf_counter()
    for _ in range(10):
        mask_iou(x, y)
    assert (time.perf_counter() - start) / 10 < 0.01  # 20×20 pairs at 96×160: a fraction of a ms here


def test_box_iou_and_gated_assignment() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], float)
    iou = box_iou(boxes, boxes)
    assert np.allclose(iou[0], [1, 1 / 3, 0])
    # The best total, among pairs that pass the gate; unrelated pairs are never matched.
    sim = np.array([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0], [0.0, 0.0, 0.05]])
    rows, cols = assign(sim, 0.2)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    rows, cols = assign(sim, np.array([0.2, 0.2, 0.01]))  # a looser gate for one column (a lost track)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0), (2, 2)]
    assert [len(v) for v in assign(np.array([[0.1, 0.15]]), 0.2)] == [0, 0]
    # Buffered IoU still sees boxes that drifted apart: both grown by half their size a side.
    wide = buffered_iou(np.array([[0, 0, 10, 10.0]]), np.array([[12, 0, 22, 10.0]]), np.zeros(1), np.zeros(1), 0.5)
    assert box_iou(boxes[:1], np.array([[12, 0, 22, 10.0]]))[0, 0] == 0 and np.isclose(wide[0, 0], 160 / 640)
    assert assign(np.array([[0.1], [0.5]]), 0.2)[0].tolist() == [1]


def test_classes_never_match_across() -> None:
    boxes = np.array([[0, 0, 10, 10.0]])
    sim = similarity(boxes, boxes, np.array([2]), np.array([3]))
    assert sim[0, 0] < 0 and len(assign(sim, 0.0)[0]) == 0
    tracker = MaskTracker()
    first = _ids(tracker, _dets(boxes, classes=[2]), 0.0)
    second = _ids(tracker, _dets(boxes, classes=[3]), 0.04)
    assert first == {0: 1} and second == {}  # the "truck" starts its own (tentative) track


def test_move_mask_follows_its_box() -> None:
    mask = (_rect((20, 10, 40, 30)) * 255).astype(np.uint8)
    moved = move_mask(mask, np.array([20, 10, 40, 30.0]), np.array([50, 20, 90, 60.0]))
    assert mask_iou(moved[None] >= 128, _rect((50, 20, 90, 60))[None])[0, 0] > 0.95
    assert move_mask(mask, np.array([20, 10, 40, 30.0]), np.array([20.01, 10, 40.01, 30])) is mask
    grid = BoxGrid.from_placement(letterbox((540, 960)), GRID)  # 960×540 → 640×384 (pad 12 top) → /4
    assert np.allclose(grid.apply(np.array([[0, 0, 960, 540.0]])), [[0, 3, 160, 93]])
