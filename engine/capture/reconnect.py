"""A live source that survives its feed: reconnects with capped, jittered exponential backoff.

A disconnect is anything that stops frames: an error, the end of the stream (a live feed
that "ends" has dropped), no frame for ``stall`` seconds, or frames whose timestamps or
pictures stay frozen that long. The first connection must succeed (a typo in a URL fails at
once, within the open timeout); after that it reconnects forever unless told otherwise.
Output timestamps continue across reconnects and discontinuities, strictly increasing.

A source that turns out to be finite (a remote file or a VOD playlist: the container knows
its duration) is passed through: read losslessly, its end is the end.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from segengine.capture.base import Source, SourceOptions, SourceStatus, SourceTimeout
from segengine.errors import EndOfStream, EngineError, SourceError
from segengine.types import Frame, SourceInfo

log = logging.getLogger("segengine.capture")

_JUMP_S = 5.0  # stream time running this far ahead of the wall clock is a discontinuity, not speed
_MIN_STEP_S = 1e-3  # the least a restamped frame moves forward


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds before the next try after ``attempts`` failures in a row: exponential, capped,
    with "equal jitter" (between half and all of it) so clients that lost one server together
    do not all come back in the same instant."""
    ceiling = min(cap, base * 2 ** min(attempts, 30))
    return ceiling * (0.5 + 0.5 * rng.random())


class ReconnectingSource:
    def __init__(self, make: Callable[[], Source], options: SourceOptions, *, name: str,
                 rng: random.Random | None = None) -> None:
        self._make, self._options, self._rng = make, options, rng or random.Random()
        self._info = SourceInfo(name=name, live=True)
        self._status = SourceStatus()
        self._inner: Source | None = None
        self._lock = threading.Lock()  # guards swapping _inner against close()
        self._closed = threading.Event()
        self._finite = False
        self._attempts = 0  # connections in a row that failed or gave no frame
        self._fresh = False  # connected, no frame yet
        self._next_try = 0.0
        self._last_error = ""
        self._skipped_before = 0  # corrupt frames counted by earlier connections
        self._index = 0
        self._offset: float | None = None  # added to the feed's pts; None: the next frame sets it
        self._last_pts: float | None = None
        self._last_wall = 0.0  # when the last frame came out
        self._connected_at = 0.0
        self._pts_mark: tuple[float, float] | None = None  # (feed pts, when it last moved)
        self._image_mark: tuple[int, float] | None = None  # (picture key, when it last changed)

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def status(self) -> SourceStatus:
        inner = self._inner
        if self._finite and inner is not None:
            return inner.status  # a pass-through has no health of its own
        skipped = self._skipped_before + (inner.status.skipped if inner is not None else 0)
        return replace(self._status, frames=self._index, skipped=skipped)

    # -- connecting -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect for the first time; a failure here is reported, not retried."""
        if self._inner is not None or self._finite:
            return
        if self._closed.is_set():
            raise SourceError(f"{self._info.name}: source was closed; make a new one to read again")
        source = self._make()
        source.open()
        inner = source.info
        self._finite = not inner.live
        self._info = replace(inner, name=self._info.name, live=inner.live)
        self._adopt(source)

    def _adopt(self, source: Source) -> None:
        with self._lock:
            if self._closed.is_set():
                source.close()
                return
            self._inner = source
        self._offset, self._pts_mark, self._image_mark = None, None, None
        self._connected_at, self._fresh = time.monotonic(), True
        self._status = replace(self._status, state="streaming")

    def _reconnect(self) -> None:
        limit = self._options.reconnect
        if limit is not None and self._attempts >= limit:
            self._status = replace(self._status, state="failed")
            raise SourceError(f"{self._info.name}: gave up after {self._attempts} reconnection attempts; "
                              f"last error: {self._last_error}")
        started = time.monotonic()
        try:
            source = self._make()
            source.open()
        except EngineError as exc:
            self._attempts += 1
            self._last_error = str(exc)
            delay = self._schedule()
            log.warning("%s: reconnection attempt %d failed (%s); next in %.1f s", self._info.name,
                        self._attempts, exc, delay)
            return
        outage = started - self._last_wall
        self._status = replace(self._status, reconnects=self._status.reconnects + 1)
        self._adopt(source)
        log.warning("%s: reconnected after %.1f s without frames (%d reconnects)", self._info.name, outage,
                    self._status.reconnects)

    def _disconnect(self, reason: str) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            self._skipped_before += inner.status.skipped
            inner.close()
        if self._fresh:  # connected but never delivered: it counts as a failed attempt, and backs off
            self._attempts += 1
        self._last_error = reason
        self._status = replace(self._status, state="reconnecting")
        delay = self._schedule()
        log.warning("%s: disconnected (%s); reconnecting in %.1f s", self._info.name, reason, delay)

    def _schedule(self) -> float:
        delay = backoff_delay(self._attempts, self._options.backoff, self._options.backoff_cap, self._rng)
        self._next_try = time.monotonic() + delay
        return delay

    # -- reading ----------------------------------------------------------------------------

    def read(self, timeout: float) -> Frame:
        if self._finite:
            return self._passthrough(timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self._closed.is_set():
                raise SourceError(f"{self._info.name}: source is closed")
            now = time.monotonic()
            inner = self._inner
            if inner is None:
                if now < self._next_try:
                    if now >= deadline:
                        raise SourceTimeout(f"{self._info.name}: reconnecting ({self._last_error})")
                    self._closed.wait(min(self._next_try, deadline) - now)
                    continue
                self._reconnect()
                continue
            try:
                frame = inner.read(max(0.01, deadline - now))
            except SourceTimeout:
                silent = time.monotonic() - max(self._last_wall, self._connected_at)
                if self._options.stall and silent > self._options.stall:
                    self._disconnect(f"no frame for {self._options.stall:g} s")
                elif time.monotonic() >= deadline:
                    raise
                continue
            except EndOfStream:
                self._disconnect("the stream ended")
                continue
            except SourceError as exc:
                if self._closed.is_set():
                    raise
                self._disconnect(str(exc))
                continue
            if reason := self._frozen(frame):
                self._disconnect(reason)
                continue
            return self._restamp(frame)

    def _passthrough(self, timeout: float) -> Frame:
        assert self._inner is not None  # a finite source keeps its only connection, even closed
        return self._inner.read(timeout)

    def _frozen(self, frame: Frame) -> str | None:
        """Why the feed counts as stalled although frames arrive, or None."""
        stall, now = self._options.stall, time.monotonic()
        if not stall:
            return None
        if self._pts_mark is None or frame.pts - self._pts_mark[0] > _MIN_STEP_S:
            self._pts_mark = (frame.pts, now)
        elif now - self._pts_mark[1] > stall:
            return f"timestamps frozen for {stall:g} s"
        if self._options.frozen_check:
            key = hash(frame.image[::16, ::16].tobytes())  # 1/256 of the pixels: cheap, and noise moves it
            if self._image_mark is None or key != self._image_mark[0]:
                self._image_mark = (key, now)
            elif now - self._image_mark[1] > stall:
                return f"picture frozen for {stall:g} s"
        return None

    def _restamp(self, frame: Frame) -> Frame:
        """Feed time made continuous: each connection is placed after the last frame by the wall
        clock; jumps are followed by the wall clock and counted as gaps."""
        now = time.monotonic()
        gaps, wall = self._status.gaps, now - self._last_wall
        if self._last_pts is None:  # the run's clock starts at 0
            self._offset = -frame.pts
        elif self._offset is None:  # a new connection: placed after the last frame by the wall clock
            self._offset = self._last_pts + max(wall, _MIN_STEP_S) - frame.pts
            gaps += 1  # the outage
        else:
            step = frame.pts + self._offset - self._last_pts
            if step <= 0 or step > wall + _JUMP_S:  # the feed's clock repeated, went back or leapt ahead
                self._offset += self._last_pts + max(wall, _MIN_STEP_S) - (frame.pts + self._offset)
                if step != 0:  # a repeated timestamp is no gap; a jump either way is
                    gaps += 1
            elif step > self._gap_threshold():
                gaps += 1  # frames lost in between
        pts = frame.pts + self._offset
        self._last_pts, self._last_wall = pts, now
        self._attempts, self._fresh = 0, False  # a frame came through: the feed is healthy again
        self._status = replace(self._status, gaps=gaps)
        out = replace(frame, index=self._index, pts=pts, captured_at=frame.captured_at or now)
        self._index += 1
        return out

    def _gap_threshold(self) -> float:
        fps = self._info.fps
        return max(1.0, 4 / float(fps)) if fps else 1.0

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Idempotent and safe from another thread: a pending read or backoff wait returns."""
        self._closed.set()
        if self._finite and self._inner is not None:
            self._inner.close()  # kept: its status (a partial end, say) is still the report
            return
        with self._lock:
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
        self._status = self._status.closed()
