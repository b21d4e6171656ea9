"""Writes results to an H.264 MP4 (or MOV/MKV) that plays anywhere, with the input's timestamps.

Each frame keeps its own pts (seconds from the container, never re-derived from fps), turned
into ticks of the source's time base, so a file in gives a file out with the same frame count,
size and timestamps, variable frame rate included. The encoder is libx264 in yuv420p (High
profile; what browsers, phones and QuickTime play), with the index at the front (faststart) so
the file streams.

Cost, which on a small CPU is taken from inference: RGB → 4:2:0 is OpenCV's BT.601 conversion
(0.3 ms a 960×540 frame against swscale's 1.5 ms), so the stream is tagged with BT.601's matrix
(and sRGB's BT.709 primaries and transfer) and players decode it to the same colours. x264 runs
``veryfast`` with its costliest analyses cut (``FAST_X264``: 4.8 ms a 960×540 frame instead of 9.9
on one core, 5.7 % bigger files at the same CRF), on ``threads`` of its own: by default one where
the machine has 2 cores or fewer (x264's frame threads cost 8 % more CPU there, and inference
wants every cycle), else x264's own choice.

Odd sizes: 4:2:0 H.264 cannot hold them. x264's SPS cropping (``crop-rect``) would be the way
to pad and crop back, but in 4:2:0 the crop unit is 2 pixels ("crop-rect 0,0,1,1 not divisible
by 2x2"), so an odd width or height is padded by one repeated edge column/row and the video is
one pixel wider/taller than the input. ``padded`` says when that happened.
"""

from __future__ import annotations

import errno
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from segengine.errors import SinkError
from segengine.types import FrameResult, SourceInfo

log = logging.getLogger(__name__)

CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
FALLBACK_TIME_BASE = Fraction(1, 90000)  # exact for 24, 25, 30, 50, 60 and the 1000/1001 rates
_BT709 = 1  # AVCOL_PRI/TRC_BT709: sRGB's primaries and transfer
_BT601 = 6  # AVCOL_SPC_SMPTE170M: the matrix OpenCV's RGB→I420 uses; tagged so players do not guess by size
_MPEG_RANGE = 1  # limited (16-235) range, what every player expects from H.264 (and what OpenCV writes)
# One-reference diamond search, fastest subpel, no trellis, a shorter look-ahead, intra partitions
# only (measured on the road video, one thread, CPU ms a frame / size: veryfast 9.9 / 1713 KB;
# these without the partitions 6.3 / 1773 KB; with them 4.8 / 1810 KB).
FAST_X264 = "subme=1:me=dia:trellis=0:ref=1:rc-lookahead=10:partitions=i8x8,i4x4"


def _open_error(path: Path, exc: OSError) -> SinkError:
    if exc.errno == errno.ENOSPC:
        return SinkError(f"cannot write video {path}: the disk is full; free space or choose another folder")
    if isinstance(exc, FileNotFoundError):
        return SinkError(f"cannot write video {path}: folder {path.parent} does not exist; create it first")
    if isinstance(exc, PermissionError):
        return SinkError(f"cannot write video {path}: permission denied; choose a folder you can write to")
    return SinkError(f"cannot write video {path}: {exc.strerror or exc}")


def _default_threads() -> int:
    """x264's threads: 1 on a machine of 2 cores or fewer, else 0 (x264's own choice)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores <= 2 else 0


def _track_timescale(time_base: Fraction) -> int:
    """The timescale FFmpeg's mov muxer gives a video track with this time base (movenc.c)."""
    scale = time_base.denominator
    while scale < 10000:
        scale *= 2
    return scale


class VideoSink:
    """H.264 video of ``result.rendered`` (or the bare frame when no renderer ran).

    The path is checked at construction so a bad folder fails before any frame is lost; the
    encoder opens on the first frame (its size is the video's size). ``close`` flushes the
    encoder and writes the index; it is idempotent.
    """

    def __init__(self, path: str | os.PathLike[str], info: SourceInfo, *, crf: int = 20,
                 preset: str = "veryfast", x264_params: str = FAST_X264, threads: int | None = None,
                 format: str | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise SinkError(f"cannot write video {self.path}: it is a folder; give a file name such as out.mp4")
        self._format = format or CONTAINERS.get(self.path.suffix.lower())
        if self._format is None:
            raise SinkError(f"cannot write video {self.path}: unknown container {self.path.suffix!r}; "
                            f"use one of {', '.join(CONTAINERS)}")
        self._info = info
        threads = _default_threads() if threads is None else threads
        self._options = {"crf": str(crf), "preset": preset, "threads": str(threads or "auto")}
        if x264_params:
            self._options["x264-params"] = x264_params
        # mp4/mov store any time base exactly; for matroska (1 ms) the muxer rounds.
        self.time_base = info.time_base or FALLBACK_TIME_BASE
        self._offset: float | None = None  # seconds subtracted from every pts (live: the first pts)
        self._last_ticks: int | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._pad: np.ndarray | None = None  # reused even-sized canvas for odd inputs
        self._yuv: np.ndarray | None = None  # reused I420 buffer: one conversion target for every frame
        self._size: tuple[int, int] | None = None  # (height, width) of the input frames
        self._closed = False
        self.frames_written = 0
        self.pts_adjusted = 0  # frames whose pts had to be nudged to stay strictly increasing
        self._created = self._probe()

    @property
    def padded(self) -> bool:
        return self._size is not None and (self._size[0] % 2 == 1 or self._size[1] % 2 == 1)

    def _probe(self) -> bool:
        """Prove the file can be created now (PyAV would only find out at the first packet)."""
        existed = self.path.exists()
        try:
            with open(self.path, "ab"):
                pass
        except OSError as exc:
            raise _open_error(self.path, exc) from exc
        return not existed

    def _open(self, height: int, width: int) -> None:
        options = {}
        if self._format in ("mp4", "mov"):
            # The edit list that places a first pts > 0 is written in the movie timescale (1 ms by
            # default), which would round the whole timeline; give it the track's own timescale.
            options = {"movflags": "+faststart", "movie_timescale": str(_track_timescale(self.time_base))}
        try:
            container = av.open(str(self.path), "w", format=self._format, options=options)
        except OSError as exc:
            raise _open_error(self.path, exc) from exc
        stream = container.add_stream("libx264", rate=self._info.fps, options=self._options)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.time_base = self.time_base
        cc = stream.codec_context
        cc.time_base = self.time_base  # frames carry pts in these ticks; the muxer rescales exactly
        # libx264 runs its own frame threads (threads=auto): write() returns while earlier frames encode.
        cc.thread_type = "AUTO"
        cc.colorspace = _BT601
        cc.color_primaries = cc.color_trc = _BT709
        cc.color_range = _MPEG_RANGE
        if (height | width) % 2:
            log.warning("%s: %dx%d is odd; H.264 4:2:0 needs even sizes, so the video is %dx%d "
                        "(last column/row repeated)", self.path, width, height, stream.width, stream.height)
            self._pad = np.empty((stream.height, stream.width, 3), np.uint8)
        self._container, self._stream, self._size = container, stream, (height, width)

    def _ticks(self, pts: float) -> int:
        if self._offset is None:
            # Files keep their timestamps; a live source's clock starts wherever it was, and an
            # MP4 cannot start before 0, so those are shifted to start at 0.
            self._offset = pts if (self._info.live or pts < 0) else 0.0
        ticks = round((pts - self._offset) * self.time_base.denominator / self.time_base.numerator)
        if self._last_ticks is not None and ticks <= self._last_ticks:
            ticks = self._last_ticks + 1  # muxers reject equal or decreasing pts
            self.pts_adjusted += 1
        self._last_ticks = ticks
        return ticks

    def _even(self, image: np.ndarray) -> np.ndarray:
        if self._pad is None:
            return image
        h, w = image.shape[:2]
        pad = self._pad
        pad[:h, :w] = image
        pad[h:, :w] = image[h - 1:h]  # repeat the edge: a black line would show when players ignore it
        pad[:, w:] = pad[:, w - 1:w]
        return pad

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"video {self.path} is already closed")
        image = result.rendered if result.rendered is not None else result.frame.image
        height, width = image.shape[:2]
        if self._container is None:
            self._open(height, width)
        elif (height, width) != self._size:
            raise SinkError(f"video {self.path}: frame {result.frame.index} is {width}x{height} "
                            f"but the video is {self._size[1]}x{self._size[0]}")
        # BT.601, 16-235, into the same buffer each frame (from_ndarray copies it into the frame)
        self._yuv = cv2.cvtColor(np.ascontiguousarray(self._even(image)), cv2.COLOR_RGB2YUV_I420, dst=self._yuv)
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = self._ticks(result.frame.pts)
        frame.time_base = self.time_base
        self._encode(frame)
        self.frames_written += 1

    def _encode(self, frame: av.VideoFrame | None) -> None:
        assert self._container is not None and self._stream is not None
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except OSError as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: OSError) -> SinkError:
        if exc.errno == errno.ENOSPC:
            error = SinkError(f"video {self.path}: the disk is full after {self.frames_written} frames; "
                              "free space or write somewhere else")
        else:
            error = SinkError(f"video {self.path}: writing failed after {self.frames_written} frames: {exc}")
        error.__cause__ = exc
        return error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            if self._created:  # nothing was written: do not leave the empty probe file behind
                self.path.unlink(missing_ok=True)
            return
        error: SinkError | None = None
        try:
            self._encode(None)  # drain the encoder's look-ahead and B-frames
        except SinkError as exc:
            error = exc
        try:
            self._container.close()  # writes the index and, with faststart, moves it to the front
        except OSError as exc:
            error = error or self._write_error(exc)
        self._container = self._stream = None
        if error is not None:
            raise error

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
