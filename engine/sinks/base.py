"""The Sink interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from segengine.types import FrameResult


@runtime_checkable
class Sink(Protocol):
    """Takes every result in order on one thread. ``close`` finalises the output (an MP4's
    index, a flushed file, renamed onto its target) and runs on normal ends, SIGINT and SIGTERM.

    A sink that writes a file may also have ``abort() -> Path | None``, which the pipeline calls
    instead of ``close`` when the run failed: it finalises what was written without replacing
    the target, and returns where that is kept (``None``: nothing worth keeping, removed)."""

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


def finish(sink: Sink, failed: bool) -> Path | None:
    """``close()`` after a run that ended well; after a failure, ``abort()`` where the sink has one.
    Returns the partial output an abort kept, if any."""
    abort = getattr(sink, "abort", None)
    if failed and abort is not None:
        return abort()
    sink.close()
    return None
