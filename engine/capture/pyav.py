"""Frames from anything FFmpeg opens (files, network streams, devices), decoded by PyAV.

Timestamps come from the container (``frame.time``), never from a frame counter, so
variable-frame-rate files keep their real timing; streams without timestamps get a clock
that continues from the previous frame, and output timestamps never go backwards.
Decoding goes packet by packet, so a corrupt packet or a frame the decoder marks corrupt is
skipped and counted (with rate-limited warnings) instead of ending the run. Frames are
turned upright by the stream's display rotation, as players show them, so masks drawn on
them line up with what the user sees.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from segengine.capture.base import SourceOptions, SourceStatus
from segengine.capture.files import check_readable_file, explain_unreadable
from segengine.capture.guard import ReadGuard
from segengine.capture.redact import Redactor
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

log = logging.getLogger("segengine.capture")

_DEFAULT_FPS = Fraction(25)  # only to step timestamps when a stream knows neither pts nor rate
_FPS_RANGE = (Fraction(1, 100), Fraction(1000))  # outside: a container's rate is nonsense (90000, 1/1000)
_WARN_EVERY_S = 5.0


def sane_fps(rate: object) -> Fraction | None:
    """A container's frame rate when it is plausible, else None (unknown)."""
    try:
        fps = Fraction(rate) if rate else None  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return fps if fps is not None and _FPS_RANGE[0] <= fps <= _FPS_RANGE[1] else None


class PyAVSource:
    """Decodes the first video stream of ``target`` to upright RGB24 frames, in order.

    ``explain`` turns an FFmpeg open error into the SourceError a user sees; ``live`` marks
    streams whose queue keeps the latest frame (None: live unless the container knows its
    duration). ``timeout`` is PyAV's (open, read) seconds.
    """

    def __init__(self, target: str, *, name: str | None = None, live: bool | None = False, fmt: str | None = None,
                 options: Mapping[str, str] | None = None, timeout: tuple[float, float] | None = None,
                 max_pixels: int = SourceOptions.max_pixels,
                 explain: Callable[[av.error.FFmpegError], SourceError] | None = None) -> None:
        self._target, self._fmt, self._options, self._timeout = target, fmt, dict(options or {}), timeout
        self._redact = Redactor.for_url(target)
        self._name = name or self._redact(target)
        self._max_pixels = max_pixels
        self._explain = explain or (lambda exc: SourceError(f"cannot open {self._name}: {self._redact(str(exc))}"))
        self._live = live
        self._info = SourceInfo(name=self._name, live=live is not False)
        self._status = SourceStatus()
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._first: Frame | None = None  # decoded at open() to learn size and rotation; read() hands it out
        self._guard = ReadGuard(lambda: self._name, self._drop_container)
        self._index = 0
        self._last_pts: float | None = None
        self._step = 1 / _DEFAULT_FPS  # seconds added to the last pts when a frame has none
        self._tick = 1e-6  # smallest pts increase (one container tick once open)
        self._warned_at = -_WARN_EVERY_S
        self._unwarned = 0  # skips since the last warning

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def status(self) -> SourceStatus:
        handed_out = self._index - (self._first is not None)  # the frame peeked at open() is not out yet
        return replace(self._status, frames=handed_out)

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        if self._container is not None:
            return
        if self._guard.closed:
            raise SourceError(f"{self._name}: source was closed; make a new one to read again")
        self._container = container = self._open_container()
        try:
            stream = self._video_stream(container)
            stream.thread_type = "AUTO"  # frame + slice threads: decode keeps up at 1080p
            self._describe(stream, container)
            self._frames = self._decoded(container, stream)
            with self._guard.reading(0.0):
                self._first = self._next_frame()  # size and rotation are known after one frame
        except EndOfStream:
            self._drop_container()
            raise SourceError(f"{self._name}: no frame could be decoded (the video stream is empty or "
                              f"every frame is corrupt)") from None
        except BaseException:
            self._drop_container()
            raise
        height, width = self._first.size
        self._info = replace(self._info, size=(height, width))
        self._status = replace(self._status, state="streaming")

    def _open_container(self) -> av.container.InputContainer:
        started = time.monotonic()
        try:
            return av.open(self._target, mode="r", format=self._fmt, options=self._options, timeout=self._timeout)
        except av.error.FFmpegError as exc:
            # Interrupted by the open timeout: FFmpeg's demuxers report it variously (exit, timeout,
            # even "invalid data" for RTSP), so the clock says what happened.
            if self._timeout and (isinstance(exc, (av.error.ExitError, av.error.TimeoutError))
                                  or time.monotonic() - started >= 0.9 * self._timeout[0]):
                raise SourceError(f"cannot open {self._name}: no answer within the {self._timeout[0]:g} s open "
                                  f"timeout (is the server up, and is this its address and path?)") from None
            raise self._explain(exc) from None
        except OSError as exc:
            raise SourceError(f"cannot open {self._name}: {self._redact(str(exc))}") from None

    def _video_stream(self, container: av.container.InputContainer) -> av.video.stream.VideoStream:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise ConfigError(f"{self._name} has no video stream (streams: {kinds}); pass a video")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise SourceError(f"{self._name}: unsupported codec: this FFmpeg build has no decoder for its video "
                              f"stream; convert it, e.g. `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p out.mp4`")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > self._max_pixels:
            raise SourceError(f"{self._name} declares a {width}×{height} frame ({width * height / 1e6:.0f} MP), "
                              f"above the {self._max_pixels / 1e6:.0f} MP limit: refused before decoding (a "
                              f"damaged or hostile header?); if the video is genuine, raise max_pixels")
        return stream

    def _describe(self, stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> None:
        fps = sane_fps(stream.average_rate)
        live = self._live if self._live is not None else container.duration is None
        self._info = SourceInfo(name=self._name, live=live,
                                size=(stream.codec_context.height, stream.codec_context.width),
                                fps=fps, frame_count=(stream.frames or None) if not live else None,
                                time_base=Fraction(stream.time_base) if stream.time_base else None)
        # guessed_rate also reads the codec's own timing (raw .h264 has average_rate 25 by
        # default while its SPS says 24), so it is the better step for pts-less frames.
        self._step = 1 / (sane_fps(stream.guessed_rate) or fps or _DEFAULT_FPS)
        if stream.time_base:
            self._tick = float(stream.time_base)

    # -- reading ----------------------------------------------------------------------------

    def read(self, timeout: float) -> Frame:
        """The next frame. ``timeout`` bounds only the wait for another read; network waits are
        bounded by the read timeout given to FFmpeg."""
        if self._frames is None:
            raise SourceError(f"{self._name}: call open() before read()" if not self._guard.closed
                              else f"{self._name}: source is closed")
        with self._guard.reading(timeout):
            if self._first is not None:
                frame, self._first = self._first, None
            else:
                frame = self._next_frame()
        return frame

    def _next_frame(self) -> Frame:
        assert self._frames is not None
        try:
            decoded = next(self._frames)
        except StopIteration:
            raise self._end() from None
        except av.error.FFmpegError as exc:
            self._status = replace(self._status, state="failed")
            raise SourceError(f"{self._name}: reading failed after {self._index} frames: "
                              f"{self._redact(str(exc))}") from None
        image = decoded.to_ndarray(format="rgb24")  # any pixel format, 10-bit included, becomes 8-bit RGB
        turns = round((decoded.rotation or 0) / 90) % 4
        if turns:
            image = np.ascontiguousarray(np.rot90(image, turns))  # counter-clockwise, as the matrix says
        frame = Frame(image=image, index=self._index, pts=self._stamp(decoded), captured_at=time.monotonic())
        self._index += 1
        return frame

    def _decoded(self, container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self._skip(f"undecodable packet near {float(packet.pts * packet.time_base):.3f} s"
                           if packet.pts is not None and packet.time_base else "undecodable packet")
                continue
            for frame in frames:
                if frame.is_corrupt:
                    self._skip(f"corrupt frame at {frame.time:.3f} s" if frame.time is not None else "corrupt frame")
                    continue
                yield frame

    def _skip(self, what: str) -> None:
        self._status = replace(self._status, skipped=self._status.skipped + 1)
        self._unwarned += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:  # one line per few seconds, however bad the stream
            log.warning("%s: skipped %s (%d skipped in all; %d since the last warning)", self._name, what,
                        self._status.skipped, self._unwarned)
            self._warned_at, self._unwarned = now, 0

    def _end(self) -> EndOfStream:
        expected, skipped = self._info.frame_count, self._status.skipped
        partial = None
        if expected and self._index + skipped < expected:
            partial = f"ended after {self._index} of {expected} frames (the file is truncated or damaged)"
            log.warning("%s: partial: %s", self._name, partial)
        self._status = replace(self._status, state="ended", partial=partial)
        return EndOfStream(f"{self._name}: end of stream after {self._index} frames"
                           + (f"; partial: {partial}" if partial else ""))

    def _stamp(self, frame: av.VideoFrame) -> float:
        """Container time when there is one; else continue the clock; never go backwards."""
        t = frame.time
        if t is None:
            t = 0.0 if self._last_pts is None else self._last_pts + float(self._step)
        elif self._last_pts is not None and t <= self._last_pts:
            t = self._last_pts + self._tick  # duplicate/backward pts in a broken file
        if frame.duration and frame.time_base:
            step = frame.duration * frame.time_base
            if sane_fps(1 / step):
                self._step = step
        self._last_pts = t
        return t

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Idempotent and safe from another thread: waits (bounded) for a decode in progress."""
        self._status = self._status.closed()
        self._guard.close()

    def _drop_container(self) -> None:
        container, self._container, self._frames, self._first = self._container, None, None, None
        if container is not None:
            container.close()


class PyAVFileSource(PyAVSource):
    """A local file: checked before FFmpeg sees it, read losslessly, never a live stream."""

    def __init__(self, path: str | os.PathLike[str], *, max_pixels: int = SourceOptions.max_pixels) -> None:
        self._path = Path(path)
        super().__init__(str(self._path), name=str(self._path), max_pixels=max_pixels,
                         explain=self._explain_file)

    def open(self) -> None:
        if self._container is None and not self._guard.closed:
            check_readable_file(self._path)
        super().open()

    def _explain_file(self, exc: av.error.FFmpegError) -> SourceError:
        if isinstance(exc, av.error.InvalidDataError):
            return explain_unreadable(self._path, "FFmpeg: invalid data")
        return SourceError(f"cannot open video file {self._path}: {exc}")
