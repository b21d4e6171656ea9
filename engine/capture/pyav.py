"""Frames from any file FFmpeg can open, decoded by PyAV.

Timestamps come from the container (``frame.time``), never from a frame counter, so
variable-frame-rate files keep their real timing. Streams without timestamps (raw
``.h264``) get a synthesised clock that continues from the previous frame.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error

from engine.errors import ConfigError, EndOfStream, SourceError
from engine.types import Frame, SourceInfo

# How long close() waits for a read in progress (one decode step) before leaving the
# container to that read to close; decoding one frame takes milliseconds.
_CLOSE_WAIT_S = 1.0
_DEFAULT_FPS = Fraction(25)  # only to step timestamps when a file knows neither pts nor rate


def check_readable_file(path: Path) -> None:
    """Fail early, with the path and a remedy, where FFmpeg would say only 'Invalid data'."""
    if not path.exists():
        raise SourceError(f"video file not found: {path} (check the path; relative paths are "
                          f"resolved from {Path.cwd()})")
    if path.is_dir():
        raise SourceError(f"{path} is a directory, not a video file (pass the folder itself to "
                          f"open_source() to read its images)")
    if path.stat().st_size == 0:
        raise SourceError(f"video file is empty (0 bytes): {path} (was it still being written or "
                          f"copied? re-export or re-copy it)")


class PyAVFileSource:
    """Decodes the first video stream of a file to RGB24 frames, losslessly and in order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._info = SourceInfo(name=str(self._path), live=False)
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._lock = threading.Lock()  # one decode step at a time; close() waits for it
        self._closed = False
        self._index = 0
        self._last_pts: float | None = None
        self._step = 1 / _DEFAULT_FPS  # seconds added to the last pts when a frame has none
        self._tick = 1e-6  # smallest pts increase (one container tick once open)

    @property
    def info(self) -> SourceInfo:
        return self._info

    def open(self) -> None:
        if self._container is not None:
            return
        if self._closed:
            raise SourceError(f"{self._path}: source was closed; make a new one to read again")
        check_readable_file(self._path)
        container = self._open_container()
        try:
            if not container.streams.video:
                kinds = ", ".join(s.type for s in container.streams) or "none"
                raise ConfigError(f"{self._path} has no video stream (streams: {kinds}); "
                                  f"pass a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads: decode keeps up at 1080p
            self._describe(stream)
            self._frames = container.decode(stream)
        except BaseException:
            container.close()
            raise
        self._container = container

    def _open_container(self) -> av.container.InputContainer:
        try:
            return av.open(str(self._path), mode="r")
        except av.error.InvalidDataError as exc:
            raise SourceError(f"{self._path} is not a media file FFmpeg can read (unknown or corrupt "
                              f"format); pass a video such as .mp4/.mkv/.avi") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open video file {self._path}: {exc}") from exc

    def _describe(self, stream: av.video.stream.VideoStream) -> None:
        rate = stream.average_rate
        fps = Fraction(rate) if rate else None
        self._info = SourceInfo(
            name=str(self._path), live=False,
            size=(stream.codec_context.height, stream.codec_context.width),
            fps=fps, frame_count=stream.frames or None,
            time_base=Fraction(stream.time_base) if stream.time_base else None)
        # guessed_rate also reads the codec's own timing (raw .h264 has average_rate 25 by
        # default while its SPS says 24), so it is the better step for pts-less frames.
        step_rate = stream.guessed_rate or rate or _DEFAULT_FPS
        self._step = 1 / Fraction(step_rate)
        if stream.time_base:
            self._tick = float(stream.time_base)

    def read(self, timeout: float) -> Frame:
        """The next frame. ``timeout`` is unused: a file read never waits on anything but disk."""
        if self._frames is None:
            raise SourceError(f"{self._path}: call open() before read()" if not self._closed
                              else f"{self._path}: source is closed")
        if not self._lock.acquire(timeout=max(timeout, _CLOSE_WAIT_S)):
            raise SourceError(f"{self._path}: another read is still in progress")
        try:
            if self._closed:
                raise SourceError(f"{self._path}: source is closed")
            try:
                frame = next(self._frames)
            except StopIteration:
                raise EndOfStream(f"{self._path}: end of file after {self._index} frames") from None
            except av.error.FFmpegError as exc:
                raise SourceError(f"{self._path}: decoding failed at frame {self._index}: {exc}") from exc
            image = frame.to_ndarray(format="rgb24")
            pts = self._stamp(frame)
        finally:
            if self._closed:  # close() gave up waiting for this read: finish its job
                self._drop_container()
            self._lock.release()
        out = Frame(image=image, index=self._index, pts=pts, captured_at=time.monotonic())
        self._index += 1
        return out

    def _stamp(self, frame: av.VideoFrame) -> float:
        """Container time when there is one; else continue the clock; never go backwards."""
        t = frame.time
        if t is None:
            t = 0.0 if self._last_pts is None else self._last_pts + float(self._step)
        elif self._last_pts is not None and t <= self._last_pts:
            t = self._last_pts + self._tick  # duplicate/backward pts in a broken file
        if frame.duration and frame.time_base:
            self._step = frame.duration * frame.time_base
        self._last_pts = t
        return t

    def close(self) -> None:
        """Idempotent and safe from another thread: waits (bounded) for a decode in progress."""
        self._closed = True
        if not self._lock.acquire(timeout=_CLOSE_WAIT_S):
            return  # a read is slow in FFmpeg; it sees _closed and closes the container itself
        try:
            self._drop_container()
        finally:
            self._lock.release()

    def _drop_container(self) -> None:
        container, self._container, self._frames = self._container, None, None
        if container is not None:
            container.close()
