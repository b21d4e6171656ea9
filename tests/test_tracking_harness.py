"""The tracking benchmark's own wiring: generator, motmetrics/TrackEval wrapper, ByteTrack adapter."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.tracking import metrics
from benchmarks.tracking.baselines import run_tracker
from benchmarks.tracking.synthetic import CELL, GRID, generate, with_scenario


@pytest.fixture(scope="module")
def seq():
    return generate("occlusion-heavy", seed=3, frames=240)


def test_generator_is_deterministic(seq) -> None:
    again = generate("occlusion-heavy", seed=3, frames=240)
    for a, b in zip(seq.frames, again.frames, strict=True):
        assert a.t == b.t and np.array_equal(a.gt.ids, b.gt.ids) and np.array_equal(a.gt.masks, b.gt.masks)
        assert np.array_equal(a.detections.boxes, b.detections.boxes)
        assert np.array_equal(a.detections.masks, b.detections.masks)
        assert np.array_equal(a.detections.scores, b.detections.scores)
    other = generate("occlusion-heavy", seed=4, frames=240)
    assert any(len(a.gt.ids) != len(b.gt.ids) or not np.array_equal(a.gt.boxes, b.gt.boxes)
               for a, b in zip(seq.frames, other.frames))


def test_ground_truth_is_consistent(seq) -> None:
    occluded = 0
    for f in seq.frames:
        # Hidden objects have neither a ground-truth row nor a detection.
        assert not set(f.hidden_ids.tolist()) & set(f.gt.ids.tolist())
        assert not set(f.hidden_ids.tolist()) & set(f.det_source.tolist())
        occluded += len(f.hidden_ids)
        # Every detection comes from a visible object or is a false positive.
        assert set(f.det_source[f.det_source >= 0].tolist()) <= set(f.gt.ids.tolist())
        assert len(set(f.gt.ids.tolist())) == len(f.gt.ids)
        for box, mask in zip(f.gt.boxes, f.gt.masks):
            rr, cc = np.nonzero(mask)
            assert len(rr) and mask.shape == GRID  # masks lie inside their boxes
            assert rr.min() * CELL >= box[1] and (rr.max() + 1) * CELL <= box[3]
            assert cc.min() * CELL >= box[0] and (cc.max() + 1) * CELL <= box[2]
        for box, mask in zip(f.detections.boxes, f.detections.masks):
            rr, cc = np.nonzero(mask)
            centres_x, centres_y = (cc + 0.5) * CELL, (rr + 0.5) * CELL
            inside = (centres_x >= box[0]) & (centres_x <= box[2]) & (centres_y >= box[1]) & (centres_y <= box[3])
            assert inside.all()
    assert occluded > 0 and len(seq.stationary_ids) == 3


def test_occlusions_last_at_most_the_limit(seq) -> None:
    started: dict[int, float] = {}
    longest = 0.0
    for f in seq.frames:
        for i in f.hidden_ids.tolist():
            started.setdefault(i, f.t)
            longest = max(longest, f.t - started[i] + 1 / seq.fps)
        started = {i: t for i, t in started.items() if i in set(f.hidden_ids.tolist())}
    assert 0 < longest <= seq.scenario.max_occlusion + 1e-9


def _gt_boxes(seq) -> list[metrics.Boxes]:
    return [metrics.Boxes(f.gt.ids, f.gt.boxes) for f in seq.frames]


def test_perfect_tracker_scores_perfectly(seq) -> None:
    gt = _gt_boxes(seq)
    hyp = [metrics.Boxes(g.ids * 10 + 7, g.boxes.copy()) for g in gt]  # other id numbers, same identities
    scores = metrics.mot_metrics(metrics.accumulate(gt, hyp))
    assert scores["idf1"] == pytest.approx(1.0) and scores["mota"] == pytest.approx(1.0)
    assert scores["num_switches"] == 0 and scores["mostly_lost"] == 0
    assert scores["mostly_tracked"] == scores["num_unique_objects"]
    h = metrics.hota(gt, hyp)
    if h is not None:
        assert h["HOTA"] == pytest.approx(1.0)


def test_swapped_ids_count_as_a_switch() -> None:
    box_a, box_b = np.array([[0, 0, 10, 20]], float), np.array([[50, 0, 60, 20]], float)
    gt = [metrics.Boxes(np.array([1, 2]), np.vstack([box_a, box_b])) for _ in range(20)]
    hyp = [metrics.Boxes(np.array([5, 6]) if k < 10 else np.array([6, 5]), np.vstack([box_a, box_b]))
           for k in range(20)]
    scores = metrics.mot_metrics(metrics.accumulate(gt, hyp))
    assert scores["num_switches"] == 2  # both objects change id once
    assert scores["idf1"] == pytest.approx(0.5)  # each id is right for half the frames
    assert scores["mota"] == pytest.approx(1 - 2 / 40)


def test_distance_matrix_gates_below_half_iou() -> None:
    gt, hyp = np.array([[0, 0, 10, 10]], float), np.array([[0, 0, 10, 10], [0, 0, 10, 21]], float)  # IoU 1, 0.48
    d = metrics.distances(gt, hyp)
    assert d[0, 0] == pytest.approx(0.0) and np.isnan(d[0, 1])


def test_bytetrack_adapter_runs() -> None:
    seq = generate(with_scenario("easy", fp_per_frame=0.0, miss_rate=0.0), seed=1, frames=60)
    run = run_tracker("bytetrack", [f.detections for f in seq.frames], [f.t for f in seq.frames], seq.fps, 1 / CELL)
    assert len(run.frames) == 60 and sum(len(o) for o in run.frames[30:]) > 0
    scores = metrics.mot_metrics(metrics.accumulate(_gt_boxes(seq),
                                                    [metrics.Boxes(o.track_ids, o.boxes) for o in run.frames]))
    assert scores["idf1"] > 0.8 and scores["num_switches"] == 0


def test_interval_benchmark_runs_every_frame_and_carries_between(seq) -> None:
    from benchmarks.tracking.interval import track_every_nth

    every = track_every_nth(seq, 1, "carry")
    ours = run_tracker("ours", [f.detections for f in seq.frames], [f.t for f in seq.frames], seq.fps, 1 / CELL)
    assert all(np.array_equal(a.track_ids, b.track_ids) and np.array_equal(a.boxes, b.boxes)
               for a, b in zip(every, ours.frames, strict=True))  # N = 1 is the plain tracker
    carried, held = track_every_nth(seq, 3, "carry"), track_every_nth(seq, 3, "hold")
    assert len(carried) == len(held) == len(seq.frames)
    assert all(held[k] is held[k - k % 3] for k in range(len(held)))
    # Carried frames move (tracks are born at rest, so only once their velocity is known).
    assert any(not np.array_equal(carried[k + 2].boxes, carried[k].boxes) for k in range(0, len(carried) - 2, 3))
