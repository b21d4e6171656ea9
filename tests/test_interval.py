"""``--interval``: the networks on every Nth frame, the frames between carried by the tracker's motion.

No weights: the fake backend boxes a bright square; no wall-clock timing decides any result here
(the adaptive policy is driven with given numbers).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

from segengine.capture.synthetic import SyntheticSource
from segengine.cli import main
from segengine.errors import ConfigError
from segengine.interval import AdaptiveInterval, FixedInterval, check_interval, make_policy
from segengine.layers.lanes import LaneFollower, LaneLines
from segengine.pipeline import Pipeline
from segengine.render.hud import hud_lines
from segengine.sinks.jsonl import JsonlSink, read_jsonl
from segengine.tracking.association import box_iou
from segengine.tracking.mask_tracker import MaskTracker
from tests.factories import FakeBackend, box_instances, class_map, road_spec

SPEED = 5  # the square's pixels per frame, to the right


class _Moving(SyntheticSource):
    """A grey frame with one white 40×40 square moving right at constant speed."""

    def read(self, timeout: float):
        frame = super().read(timeout)
        frame.image[:] = 60
        x = self.x(frame.index)
        frame.image[60:100, x:x + 40] = 255
        return frame

    @staticmethod
    def x(index: int) -> int:
        return 20 + SPEED * index


class _InFlight(FakeBackend):
    """The fake backend driven as a double-buffered one (``submit`` now, ``collect`` later)."""

    def __init__(self) -> None:
        super().__init__(spec=road_spec((180, 320)))
        self.queued: deque[dict[str, np.ndarray]] = deque()
        self.most_in_flight = 0

    def submit(self, frame: np.ndarray) -> None:
        self.queued.append(self.infer(frame))
        self.most_in_flight = max(self.most_in_flight, len(self.queued))

    def collect(self) -> dict[str, np.ndarray]:
        return self.queued.popleft()


def _run(interval, frames: int, backend: FakeBackend | None = None, **kwargs) -> tuple[list, FakeBackend]:
    backend = backend or FakeBackend(spec=road_spec((180, 320)))
    with Pipeline(_Moving(width=320, height=180, frames=frames), backend=backend, interval=interval,
                  **kwargs) as pipeline:
        return list(pipeline), backend


# -- the values --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -1, "0", "-3", "abc", "2.5", 2.5, True, None, ""])
def test_bad_intervals_are_a_config_error_naming_the_flag(value) -> None:
    with pytest.raises(ConfigError, match="--interval .*whole number of frames >= 1 .*'auto'"):
        check_interval(value)


def test_good_intervals() -> None:
    assert [check_interval(v) for v in (1, "3", " 7 ", "auto", "AUTO")] == [1, 3, 7, "auto", "auto"]


def test_the_pipeline_refuses_a_bad_interval_before_opening_anything() -> None:
    with pytest.raises(ConfigError, match="--interval 0"):
        Pipeline(SyntheticSource(width=320, height=180, frames=1), backend=FakeBackend(), interval=0)


def test_the_cli_says_what_is_wrong_with_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "synthetic://?frames=1", "--interval", "fast", "-q"]) == 2
    assert "--interval 'fast': expected a whole number" in capsys.readouterr().err


# -- the policies ------------------------------------------------------------------------------

def test_a_fixed_interval_infers_every_nth_frame_and_a_forced_frame_restarts_the_count() -> None:
    policy = FixedInterval(3)
    assert [policy.due(i / 25) for i in range(7)] == [True, False, False, True, False, False, True]
    assert policy.due(7 / 25, force=True) and [policy.due(i / 25) for i in range(8, 11)] == [False, False, True]


def test_auto_is_every_frame_on_a_file_and_adapts_on_a_live_feed() -> None:
    file_policy = make_policy("auto", live=False, frame_interval=0.04)
    assert isinstance(file_policy, FixedInterval) and file_policy.n == 1
    assert isinstance(make_policy("auto", live=True), AdaptiveInterval)
    assert make_policy(4, live=True).n == 4


def _feed(policy: AdaptiveInterval, infer_seconds: float, frames: int, start: int = 0, gap: float = 0.04) -> int:
    """``frames`` frames ``gap`` apart, each inferred one taking ``infer_seconds``: the N at the end."""
    for i in range(start, start + frames):
        if policy.due(i * gap):
            policy.observe(infer_seconds)
    return policy.n


def test_auto_picks_a_larger_interval_when_inference_is_slower_than_the_feed_and_falls_back() -> None:
    policy = AdaptiveInterval(0.04)  # a 25 fps feed
    assert _feed(policy, 0.03, 20) == 1  # 30 ms per inference: keeps up
    assert _feed(policy, 0.10, 60, start=20) == 3  # 100 ms = 2.5 frames: one frame in 3
    assert _feed(policy, 1.0, 200, start=80) == 8  # far too slow: capped at the upper bound
    assert _feed(policy, 0.01, 400, start=280) == 1  # fast again: back to every frame


def test_auto_does_not_flap_between_neighbours_on_a_load_near_a_boundary() -> None:
    policy = AdaptiveInterval(0.04)
    _feed(policy, 0.10, 60)
    assert policy.n == 3
    seen = set()
    for k in range(40):  # 2.2 .. 2.6 frames per inference: wants 3 up, and 2 would be too tight
        if policy.due((60 + k) * 0.04):
            policy.observe(0.088 + 0.016 * (k % 2))
        seen.add(policy.n)
    assert seen == {3}


def test_auto_learns_the_feed_rate_from_timestamps_and_is_not_fooled_by_dropped_frames() -> None:
    policy = AdaptiveInterval(None)  # no nominal rate
    pts = np.cumsum([0.04 if i % 3 else 0.08 for i in range(30)])  # every third gap: a dropped frame
    for t in pts:
        policy.due(float(t))
    assert policy.frame_interval == pytest.approx(0.04)


def test_adaptive_bounds_are_checked() -> None:
    with pytest.raises(ConfigError, match="low <= high"):
        AdaptiveInterval(0.04, low=5, high=2)


# -- the pipeline ------------------------------------------------------------------------------

def test_interval_3_on_a_file_keeps_every_frame_in_order_and_marks_the_carried_ones(tmp_path: Path) -> None:
    results, backend = _run(3, 10, sinks=[JsonlSink(tmp_path / "r.jsonl")])
    assert [r.frame.index for r in results] == list(range(10))
    assert [r.inferred for r in results] == [i % 3 == 0 for i in range(10)]
    assert backend.calls == 4  # the backend saw the inferred frames only
    for r in results:  # every frame has every layer, inferred or carried
        assert sorted(r.layers) == ["drivable", "instances", "lanes"] and len(r.instances) == 1
        assert ("infer" in r.timings) == r.inferred
    records = list(read_jsonl(tmp_path / "r.jsonl"))
    assert [rec["frame"] for rec in records] == list(range(10))
    assert [rec["inferred"] for rec in records] == [i % 3 == 0 for i in range(10)]
    assert all(sorted(rec["layers"]) == ["drivable", "instances", "lanes"] for rec in records)


def test_the_default_infers_every_frame() -> None:
    results, backend = _run(1, 5)
    assert all(r.inferred for r in results) and backend.calls == 5


def test_auto_on_a_file_infers_every_frame() -> None:
    results, backend = _run("auto", 6)
    assert all(r.inferred for r in results) and backend.calls == 6


def test_auto_on_a_live_feed_runs_and_starts_by_inferring() -> None:
    backend = FakeBackend(spec=road_spec((180, 320)))
    with Pipeline(_Moving(width=320, height=180, frames=4, fps=100, live=True), backend=backend, interval="auto",
                  render=False) as pipeline:
        results = list(pipeline)
    # The fake backend is fast, so N stays 1; how many frames a live feed drops is the clock's, not asserted.
    assert results and results[0].inferred and backend.calls == sum(r.inferred for r in results)


def test_maps_and_lanes_are_held_from_the_last_inferred_frame() -> None:
    results, _ = _run(3, 6)
    for r in results[1:3]:
        assert r.drivable is results[0].drivable and r.lanes is results[0].lanes


def test_carried_masks_move_with_the_object_instead_of_freezing() -> None:
    results, _ = _run(3, 36)
    late = [r for r in results[18:] if not r.inferred]
    assert late
    for r in late:
        last = results[r.frame.index - r.frame.index % 3]  # its last inferred frame
        truth = np.array([[_Moving.x(r.frame.index), 60, _Moving.x(r.frame.index) + 40, 100]], np.float32)
        box, frozen = r.instances.boxes, last.instances.boxes
        assert box[0, 0] - frozen[0, 0] >= 0.6 * SPEED * (r.frame.index % 3)  # moved right, most of the way
        assert box_iou(box, truth)[0, 0] > box_iou(frozen, truth)[0, 0] + 0.05
        assert r.instances.track_ids[0] == last.instances.track_ids[0]
        # The mask moved with the box: its columns' centre is to the right of the last inferred one's.
        cols = r.instances.masks[0].astype(float).sum(0)
        cols_last = last.instances.masks[0].astype(float).sum(0)
        centre = (cols * np.arange(len(cols))).sum() / cols.sum()
        centre_last = (cols_last * np.arange(len(cols))).sum() / cols_last.sum()
        assert centre > centre_last + 0.5


def test_a_pipelined_backend_keeps_order_and_sees_only_the_inferred_frames() -> None:
    backend = _InFlight()
    results, _ = _run(2, 9, backend=backend)
    assert [r.frame.index for r in results] == list(range(9))
    assert [r.inferred for r in results] == [i % 2 == 0 for i in range(9)]
    assert backend.calls == 5 and not backend.queued and backend.most_in_flight <= 2
    plain, _ = _run(2, 9)
    for a, b in zip(results, plain):  # the same answers as the synchronous path
        assert np.array_equal(a.instances.boxes, b.instances.boxes)


def test_a_tracker_without_carry_holds_its_last_answer() -> None:
    class Numbering:
        def update(self, instances, t):
            return instances.with_tracks(np.full(len(instances), 7))

        def reset(self) -> None:
            pass

    results, _ = _run(2, 4, tracker=Numbering(), render=False)
    assert results[1].instances is results[0].instances and results[3].instances is results[2].instances


def test_the_hud_marks_carried_frames() -> None:
    assert ("frame", "12 carried") in hud_lines(30.0, 20.0, 12, carried=True)
    assert ("frame", "12") in hud_lines(30.0, 20.0, 12)


# -- the stages --------------------------------------------------------------------------------

def _square(index: int) -> object:
    x = float(20 + 4 * index)
    return box_instances([[x, 50, x + 40, 90]])


def test_carrying_never_changes_the_tracking_itself() -> None:
    plain, carrier = MaskTracker(), MaskTracker()
    for i in range(0, 30, 3):
        a, b = plain.update(_square(i), i / 25), carrier.update(_square(i), i / 25)
        assert np.array_equal(a.track_ids, b.track_ids) and np.array_equal(a.masks, b.masks)
        assert np.allclose(a.boxes, b.boxes)
        for j in (1, 2):
            carrier.carry((i + j) / 25)


def test_the_tracker_carries_its_tracks_at_their_velocity() -> None:
    tracker = MaskTracker()
    for i in range(0, 30, 3):
        shown = tracker.update(_square(i), i / 25)
    carried = tracker.carry(29 / 25)  # two frames after the last update, at 4 px per frame
    assert carried is not None and np.array_equal(carried.track_ids, shown.track_ids)
    assert carried.boxes[0, 0] - shown.boxes[0, 0] == pytest.approx(8, abs=2)
    assert MaskTracker().carry(0.0) is None  # nothing to carry before the first frame


def test_the_lane_follower_holds_its_last_lanes() -> None:
    follower = LaneFollower()
    assert follower.carry(0.0) is None
    lanes = follower.update(class_map(LaneLines, classes=("background", "lane")), 0.0)
    assert follower.carry(0.04) is lanes
