"""Reading a given number of frames from anything with a ``read(timeout)``-like call."""

from __future__ import annotations

import time
from collections.abc import Callable

from segengine.capture.base import SourceTimeout
from segengine.types import Frame


def read_frames(read: Callable[[float], Frame], n: int, timeout: float, poll: float = 0.5) -> list[Frame]:
    """``n`` frames from ``source.read`` or ``capture.get``, riding out SourceTimeouts (a live feed
    between frames, or reconnecting); fails the test after ``timeout`` seconds."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < n:
        assert time.monotonic() < deadline, f"only {len(frames)} of {n} frames in {timeout} s"
        try:
            frames.append(read(poll))
        except SourceTimeout:
            pass
    return frames
