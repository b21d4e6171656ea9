"""The reconnecting wrapper on scripted feeds: what a flaky camera or server does, made exact."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest

from segengine.capture.base import SourceOptions, SourceStatus, SourceTimeout
from segengine.capture.reconnect import ReconnectingSource, backoff_delay
from segengine.capture.thread import CaptureThread
from segengine.errors import EndOfStream, SourceError
from segengine.types import Frame, SourceInfo
from tests.reading import read_frames

FAST = SourceOptions(backoff=0.02, backoff_cap=0.05, stall=0.3)


@dataclass
class Plan:
    """One connection: ``frames`` frames ``step`` seconds apart from ``start`` (feed time), then ``then``."""

    frames: int = 5
    start: float = 100.0
    step: float = 0.04
    then: str = "eof"  # eof | error | timeout (silence) | same-pts | same-image
    fail: bool = False  # the connection attempt itself fails
    live: bool = True


@dataclass
class Feed:
    """Builds one scripted inner source per connection, in plan order; counts the attempts."""

    plans: list[Plan]
    attempts: int = 0
    opened: list[Scripted] = field(default_factory=list)

    def __call__(self) -> Scripted:
        plan = self.plans[min(self.attempts, len(self.plans) - 1)]
        self.attempts += 1
        return Scripted(plan, self)


class Scripted:
    def __init__(self, plan: Plan, feed: Feed) -> None:
        self.plan, self.feed, self.sent, self.closed = plan, feed, 0, threading.Event()
        self.info = SourceInfo(name="feed", live=plan.live, size=(8, 8), fps=Fraction(25))

    @property
    def status(self) -> SourceStatus:
        return SourceStatus(state="streaming", frames=self.sent, skipped=1)  # each connection skipped one

    def open(self) -> None:
        if self.plan.fail:
            raise SourceError("connection refused")
        self.feed.opened.append(self)

    def read(self, timeout: float) -> Frame:
        if self.closed.is_set():
            raise SourceError("closed")
        p = self.plan
        if self.sent >= p.frames:
            if p.then == "eof":
                raise EndOfStream("feed ended")
            if p.then == "error":
                raise SourceError("connection reset by peer")
            if p.then == "timeout":
                self.closed.wait(min(timeout, 0.05))
                raise SourceTimeout("nothing")
        frozen_pts = p.then == "same-pts" and self.sent >= p.frames
        frozen_image = p.then == "same-image" and self.sent >= p.frames
        pts = p.start + p.step * (p.frames if frozen_pts else self.sent)
        value = p.frames if frozen_image else self.sent
        self.sent += 1
        time.sleep(0.005)
        return Frame(image=np.full((8, 8, 3), value % 256, np.uint8), index=self.sent - 1, pts=pts,
                     captured_at=time.monotonic())

    def close(self) -> None:
        self.closed.set()


def take(source: ReconnectingSource, n: int, timeout: float = 5.0) -> list[Frame]:
    return read_frames(source.read, n, timeout, poll=0.2)


def opened(feed: Feed, options: SourceOptions = FAST) -> ReconnectingSource:
    source = ReconnectingSource(feed, options, name="rtsp://***@cam/x", rng=random.Random(0))
    source.open()
    return source


@pytest.mark.parametrize("then", ["eof", "error", "timeout", "same-pts", "same-image"])
def test_every_kind_of_disconnect_reconnects_and_time_keeps_going(then: str) -> None:
    feed = Feed([Plan(frames=5, then=then), Plan(frames=5, start=3.0), Plan(frames=1000, start=7.0)])
    source = opened(feed)
    frames: list[Frame] = []
    deadline = time.monotonic() + 5.0
    while source.status.reconnects < 2 or len(frames) < 20:  # a frozen feed delivers frames until it is caught
        assert time.monotonic() < deadline, f"{source.status}"
        frames += take(source, 1)
    frames += take(source, 6)  # steady on the third connection
    source.close()
    assert feed.attempts == 3 and source.status.reconnects == 2
    assert [f.index for f in frames] == list(range(len(frames)))
    pts = [f.pts for f in frames]
    assert pts[0] == 0.0 and all(b > a for a, b in zip(pts, pts[1:]))  # feed times 100 → 3 → 7 made continuous
    assert np.allclose(np.diff(pts[:5]), 0.04) and np.allclose(np.diff(pts[-5:]), 0.04)  # within a connection
    assert source.status.gaps == 2  # the two outages, each once (a frozen clock's repeats are no gaps)
    assert source.status.skipped >= 2  # what earlier connections skipped is kept
    assert source.status.state == "closed"


def test_frozen_picture_is_not_a_stall_when_the_check_is_off() -> None:
    feed = Feed([Plan(frames=3, then="same-image"), Plan(frames=50)])
    source = opened(feed, SourceOptions(backoff=0.02, backoff_cap=0.05, stall=0.2, frozen_check=False))
    take(source, 60, timeout=3.0)  # well past the stall time with one unchanging picture
    assert source.status.reconnects == 0 and feed.attempts == 1
    source.close()


def test_failed_attempts_back_off_and_give_up_when_told() -> None:
    feed = Feed([Plan(frames=2), Plan(fail=True)])
    source = opened(feed, SourceOptions(backoff=0.02, backoff_cap=0.05, reconnect=3))
    take(source, 2)
    with pytest.raises(SourceError, match=r"gave up after 3 reconnection attempts; last error: .*refused"):
        for _ in range(200):
            try:
                source.read(0.2)
            except SourceTimeout:
                pass
    assert feed.attempts == 4 and source.status.state == "failed"


def test_the_first_connection_is_not_retried() -> None:
    feed = Feed([Plan(fail=True)])
    source = ReconnectingSource(feed, FAST, name="cam")
    with pytest.raises(SourceError, match="refused"):
        source.open()
    assert feed.attempts == 1


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(10.0, 0.5 * 2 ** attempt)
        delays = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not in lockstep
    assert backoff_delay(10_000, 0.5, 10.0, rng) <= 10.0  # no overflow on a long outage


def test_close_from_another_thread_ends_a_backoff_wait_at_once() -> None:
    feed = Feed([Plan(frames=1), Plan(fail=True)])
    source = opened(feed, SourceOptions(backoff=30.0, backoff_cap=30.0))
    take(source, 1)
    threading.Timer(0.2, source.close).start()
    start = time.monotonic()
    with pytest.raises(SourceError, match="closed"):
        while True:
            try:
                source.read(60.0)
            except SourceTimeout:
                pass
    assert time.monotonic() - start < 2.0


def test_a_jump_in_feed_time_follows_the_wall_clock_and_counts_a_gap() -> None:
    class Jumping(Scripted):
        def read(self, timeout: float) -> Frame:
            frame = super().read(timeout)
            return Frame(image=frame.image, index=frame.index, pts=frame.pts + (1e4 if frame.index >= 3 else 0))

    feed = Feed([Plan(frames=100)])
    source = ReconnectingSource(lambda: Jumping(feed.plans[0], feed), FAST, name="cam")
    source.open()
    pts = [f.pts for f in take(source, 6)]
    assert all(b > a for a, b in zip(pts, pts[1:])) and pts[-1] < 1.0  # not 10000 s later
    assert source.status.gaps == 1 and source.status.reconnects == 0
    source.close()


def test_a_finite_feed_passes_through_and_ends() -> None:
    feed = Feed([Plan(frames=4, live=False, then="eof")])
    source = opened(feed)
    assert not source.info.live
    with CaptureThread(source) as capture:
        assert capture.get(2.0).pts == 100.0  # untouched: a remote file keeps its own times
        for _ in range(3):
            capture.get(2.0)
        assert capture.policy == "lossless"
        with pytest.raises(EndOfStream):
            capture.get(2.0)
    assert feed.attempts == 1


def test_a_feed_that_connects_but_never_delivers_backs_off_and_gives_up() -> None:
    feed = Feed([Plan(frames=2), Plan(frames=0, then="error")])  # accepts, then drops at once, again and again
    source = opened(feed, SourceOptions(backoff=0.02, backoff_cap=0.05, reconnect=3))
    take(source, 2)
    with pytest.raises(SourceError, match="gave up after 3 reconnection attempts"):
        for _ in range(200):
            try:
                source.read(0.2)
            except SourceTimeout:
                pass
    assert feed.attempts == 4


def test_a_long_outage_is_one_gap() -> None:
    feed = Feed([Plan(frames=3), Plan(frames=20, start=50.0)])
    source = opened(feed, SourceOptions(backoff=2.4, backoff_cap=2.4))  # waits 1.2 to 2.4 s: over the 1 s gap
    frames = take(source, 10, timeout=10.0)
    source.close()
    assert source.status.reconnects == 1 and source.status.gaps == 1
    assert frames[3].pts - frames[2].pts > 1.0  # the outage shows in the timeline, once
