"""The Source interface: every way frames come in."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from engine.errors import SourceError
from engine.types import Frame, SourceInfo


class SourceTimeout(SourceError, TimeoutError):
    """No frame arrived within the read timeout (the source may still recover)."""


@runtime_checkable
class Source(Protocol):
    """A stream of frames. End states are exceptions, never ``None``.

    ``read`` returns the next frame, or raises ``EndOfStream`` (no more frames),
    ``SourceTimeout`` (nothing within ``timeout`` seconds) or ``SourceError`` (broken).
    ``close`` may be called from another thread to unblock a pending ``read``, and twice.
    """

    @property
    def info(self) -> SourceInfo: ...

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame: ...

    def close(self) -> None: ...
