"""The Source interface: every way frames come in, with its options and its health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from segengine.errors import ConfigError, SourceError
from segengine.types import Frame, SourceInfo, SourceStatus

__all__ = ["Source", "SourceOptions", "SourceStatus", "SourceTimeout"]


class SourceTimeout(SourceError, TimeoutError):
    """No frame arrived within the read timeout (the source may still recover)."""


@dataclass(frozen=True)
class SourceOptions:
    """How live and network sources are opened and kept alive; files use only ``max_pixels``."""

    open_timeout: float = 10.0  # seconds to connect and read the stream's header
    read_timeout: float = 5.0  # seconds a network read may wait for data before it counts as a disconnect
    stall: float = 10.0  # seconds without a new frame (or with frozen time or content) before reconnecting
    frozen_check: bool = True  # also treat identical images for ``stall`` seconds as a stall
    reconnect: int | None = None  # attempts in a row before giving up; None: forever
    backoff: float = 0.5  # first wait before reconnecting, doubled at each failed attempt...
    backoff_cap: float = 10.0  # ...up to this, with random jitter so many clients do not retry in step
    rtsp_transport: Literal["tcp", "udp"] = "tcp"  # tcp survives NAT and loss without smearing frames
    camera_backend: Literal["opencv", "pyav"] = "opencv"  # V4L2 through OpenCV, or PyAV's v4l2 demuxer
    max_pixels: int = 8192 * 8192  # frames declared larger are refused before anything is allocated

    def __post_init__(self) -> None:
        for name in ("open_timeout", "read_timeout", "backoff", "backoff_cap"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.stall < 0:
            raise ConfigError(f"stall must be >= 0 seconds (0 turns stall detection off), got {self.stall}")
        if self.reconnect is not None and self.reconnect < 0:
            raise ConfigError(f"reconnect must be >= 0 attempts or None (forever), got {self.reconnect}")
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ConfigError(f"rtsp_transport must be tcp or udp, got {self.rtsp_transport!r}")
        if self.camera_backend not in ("opencv", "pyav"):
            raise ConfigError(f"camera_backend must be opencv or pyav, got {self.camera_backend!r}")


@runtime_checkable
class Source(Protocol):
    """A stream of frames. End states are exceptions, never ``None``.

    ``read`` returns the next frame, or raises ``EndOfStream`` (no more frames),
    ``SourceTimeout`` (nothing within ``timeout`` seconds) or ``SourceError`` (broken).
    ``close`` may be called from another thread to unblock a pending ``read``, and twice.
    ``status`` may be read from any thread.
    """

    @property
    def info(self) -> SourceInfo: ...

    @property
    def status(self) -> SourceStatus: ...

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame: ...

    def close(self) -> None: ...
