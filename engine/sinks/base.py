"""The Sink interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from segengine.types import FrameResult


@runtime_checkable
class Sink(Protocol):
    """Takes every result in order on one thread. ``close`` finalises the output (an MP4's
    index, a flushed file) and runs on normal ends, errors, SIGINT and SIGTERM alike."""

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...
