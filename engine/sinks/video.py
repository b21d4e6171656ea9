"""Writes results to an H.264 MP4 (or MOV/MKV) that plays anywhere, with the input's timestamps,
and that still plays after the run is killed, the power fails or the disk fills.

Each frame keeps its own pts (seconds from the container, never re-derived from fps), turned
into ticks of the source's time base, so a file in gives a file out with the same frame count,
size and timestamps, variable frame rate included. The encoder is libx264 in yuv420p (High
profile; what browsers, phones and QuickTime play).

Nothing lost. The video is written under a temporary name beside the target
(``<stem>.<random>.partial<suffix>``, ``staging.StagedFile``) and renamed onto it only when the run
ends cleanly (a SIGINT/SIGTERM stop included); an existing file of the target's name is never
touched otherwise.

- While running, MP4/MOV is *fragmented*: the index (``moov``) first, then a ``moof`` + ``mdat``
  fragment about every ``fragment_seconds`` (1 s; FFmpeg's ``frag_duration``, which cuts between
  any two frames, so x264's keyframe interval and the file's size are what they were). ``delay_moov``
  holds the ``moov`` until the first fragment, so its edit list places a first pts > 0 (and x264's
  B-frame delay) exactly, as in an ordinary MP4. Matroska gets a ``Cluster`` about every second
  (``cluster_time_limit``) and needs no more: its index (Cues) is written at the end, and a file
  without it plays. ``fragments.FragmentFile`` puts only whole fragments on disk, one write (and
  one fdatasync, ``sync``) each, so a SIGKILL or a power loss leaves a file that plays up to its
  last fragment: at most about a second plus x264's delay is lost (look-ahead and B-frames: 11
  frames with one encoder thread, as on 2 cores; each further frame thread adds one).
- After a clean end the fragmented MP4/MOV is copied (``remux``: stream copy, 0.6-0.9 s for 449
  MiB and 0.07 s for 18 000 packets here, from the page cache) into an ordinary one with the
  index at the front (faststart), which is committed; the fragmented one is removed. If that
  cannot run (less free space than a second copy and ``min_free``, or the copy fails), the
  fragmented file is committed instead (it plays; some editors and old players seek in it
  poorly) and a warning says so.
- A failed write (a full disk, an I/O error) is raised by the ``write`` of the frame at which the
  disk refused it, naming that frame and what the left file holds: the file is cut back to its
  last complete fragment and kept under its ``.partial`` name, or removed when no frame reached
  the disk. Data reaches the disk a fragment at a time, so the frame named is the one whose
  packets completed a fragment that did not fit: it is up to one fragment (``fragment_seconds``
  of frames) plus x264's delay after the last frame the file holds.
- Free space: construction refuses a folder with less than ``min_free`` bytes free (64 MiB by
  default; 0 turns the watch off), and after each fragment (and at least every second) the free
  space is looked at again: below ``min_free`` the video is finished (every frame given so far,
  index written), kept under its ``.partial`` name, and a SinkError says so and stops the run, so
  a disk filling up ends in a playable file and never in a broken one that fills it to the brim.

Counts: ``frames_written`` is frames given to the encoder; ``frames_in_file`` is frames whose
packets are on disk in complete fragments (exact: the fragments' own sample counts, matched to the
frames' timestamps, so a B-frame not yet written is not counted); they are equal after ``close``.
``output`` is where the video is after ``close`` (the target, the kept ``.partial``, or None) and
``fragmented`` says whether it was kept fragmented.

Frame size changes mid-stream (a camera reconnecting at another resolution): the video keeps its
first size; a frame of another size is scaled to fit, aspect ratio kept, centred on black bars,
and each new size is logged once.

Cost, which on a small CPU is taken from inference: RGB → 4:2:0 is OpenCV's BT.601 conversion
(0.3 ms a 960×540 frame against swscale's 1.5 ms), so the stream is tagged with BT.601's matrix
(and sRGB's BT.709 primaries and transfer) and players decode it to the same colours. x264 runs
``veryfast`` with its costliest analyses cut (``FAST_X264``: 4.8 ms a 960×540 frame instead of 9.9
on one core, 5.7 % bigger files at the same CRF), on ``threads`` of its own: by default one where
the machine has 2 cores or fewer (x264's frame threads cost 8 % more CPU there, and inference
wants every cycle), else x264's own choice. Nothing lost costs next to nothing: 5.37 against 5.33 ms
of CPU a 960×540 frame (best of 5, the road video; within the noise), one fdatasync a second
(4 ms on average here, 22 ms at worst; ``sync=False`` leaves it to the kernel), and the copy at the end.

Odd sizes: 4:2:0 H.264 cannot hold them. x264's SPS cropping (``crop-rect``) would be the way
to pad and crop back, but in 4:2:0 the crop unit is 2 pixels ("crop-rect 0,0,1,1 not divisible
by 2x2"), so an odd width or height is padded by one repeated edge column/row and the video is
one pixel wider/taller than the input. ``padded`` says when that happened.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from segengine.errors import SinkError
from segengine.geometry import Placement, letterbox
from segengine.sinks.fragments import FragmentFile, FramesOnDisk
from segengine.sinks.remux import commit_faststart
from segengine.sinks.remux import mib as _mib
from segengine.sinks.staging import StagedFile, check_target
from segengine.types import FrameResult, SourceInfo

log = logging.getLogger(__name__)

CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
FALLBACK_TIME_BASE = Fraction(1, 90000)  # exact for 24, 25, 30, 50, 60 and the 1000/1001 rates
MIN_FREE = 64 << 20  # bytes kept free on the output's disk (see the module's text)
FRAGMENT_SECONDS = 1.0
_SPACE_CHECK_SECONDS = 1.0
_BT709 = 1  # AVCOL_PRI/TRC_BT709: sRGB's primaries and transfer
_BT601 = 6  # AVCOL_SPC_SMPTE170M: the matrix OpenCV's RGB→I420 uses; tagged so players do not guess by size
_MPEG_RANGE = 1  # limited (16-235) range, what every player expects from H.264 (and what OpenCV writes)
# One-reference diamond search, fastest subpel, no trellis, a shorter look-ahead, intra partitions
# only (measured on the road video, one thread, CPU ms a frame / size: veryfast 9.9 / 1713 KB;
# these without the partitions 6.3 / 1773 KB; with them 4.8 / 1810 KB).
FAST_X264 = "subme=1:me=dia:trellis=0:ref=1:rc-lookahead=10:partitions=i8x8,i4x4"


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

    The folder (and its free space) is checked at construction so a bad output fails before any
    frame is lost; the encoder opens on the first frame (its size is the video's size). ``close``
    flushes the encoder, finishes the file and renames it onto the target; it is idempotent.
    ``abort`` finishes the file but keeps it under its ``.partial`` name (a run that failed
    elsewhere). ``min_free``: bytes to keep free on the disk; ``fragment_seconds``: how much a
    crash can lose; ``sync``: fdatasync each fragment (a power loss keeps it too).
    """

    def __init__(self, path: str | os.PathLike[str], info: SourceInfo, *, crf: int = 20,
                 preset: str = "veryfast", x264_params: str = FAST_X264, threads: int | None = None,
                 format: str | None = None, min_free: int = MIN_FREE,
                 fragment_seconds: float = FRAGMENT_SECONDS, sync: bool = True) -> None:
        self.path = check_target(path, "video", "a file name such as out.mp4")
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
        self.min_free, self.fragment_seconds, self.sync = min_free, fragment_seconds, sync
        self._offset: float | None = None  # seconds subtracted from every pts (live: the first pts)
        self._last_ticks: int | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._file: FragmentFile | None = None
        self._pad: np.ndarray | None = None  # reused even-sized canvas for odd inputs
        self._yuv: np.ndarray | None = None  # reused I420 buffer: one conversion target for every frame
        self._size: tuple[int, int] | None = None  # (height, width) of the input frames
        self._fits: dict[tuple[int, int], tuple[np.ndarray, Placement]] = {}  # other sizes: canvas, where
        self._closed = False
        self.frames_written = 0
        self.pts_adjusted = 0  # frames whose pts had to be nudged to stay strictly increasing
        self.output: Path | None = None
        self.fragmented = False
        self._frames = FramesOnDisk()
        self._counted = 0  # the file's samples already matched to frames
        self._index = -1  # the frame being written, for messages
        self._space_checked = 0.0
        self._staged = StagedFile(self.path, what="video")
        try:
            free = shutil.disk_usage(self._staged.path.parent).free
        except OSError:
            free = None
        if free is not None and free < min_free:
            self._staged.discard()
            raise SinkError(f"cannot write video {self.path}: only {_mib(free)} free in {self._folder}, below the "
                            f"{_mib(min_free)} a video keeps free (min_free); free space or choose another folder")

    @property
    def padded(self) -> bool:
        return self._size is not None and (self._size[0] % 2 == 1 or self._size[1] % 2 == 1)

    @property
    def frames_in_file(self) -> int:
        """Frames whose packets are on disk in complete fragments (all of them after ``close``)."""
        return self._frames.count

    @property
    def partial(self) -> Path:
        """The temporary file the video is written into (renamed onto ``path`` on a clean close)."""
        return self.path.with_name(self._staged.path.name)

    @property
    def _folder(self) -> Path:
        return self.path.parent.resolve()

    # -- opening ---------------------------------------------------------------------------------

    def _open(self, height: int, width: int) -> None:
        if self._format in ("mp4", "mov"):
            # The edit list that places a first pts > 0 is written in the movie timescale (1 ms by
            # default), which would round the whole timeline; give it the track's own timescale.
            options = {"movflags": "+empty_moov+delay_moov+default_base_moof",
                       "frag_duration": str(round(self.fragment_seconds * 1e6)),
                       "movie_timescale": str(_track_timescale(self.time_base))}
        else:
            options = {"cluster_time_limit": str(round(self.fragment_seconds * 1000))}
        options["flush_packets"] = "1"  # each packet's bytes leave FFmpeg's buffer in its own mux call
        layout = "mkv" if self._format == "matroska" else "mp4"
        try:
            self._file = FragmentFile(self._staged.path, layout, sync=self.sync)
            container = av.open(self._file, "w", format=self._format, options=options)
        except OSError as exc:
            self._closed = True
            self._staged.discard()
            raise SinkError(f"cannot write video {self.path}: {exc.strerror or exc}") from exc
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
        self._space_checked = time.monotonic()

    # -- each frame ------------------------------------------------------------------------------

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

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """A frame of another size, scaled into the video's (aspect ratio kept) on black bars."""
        assert self._size is not None
        h, w = image.shape[:2]
        fit = self._fits.get((h, w))
        if fit is None:
            where = letterbox((h, w), canvas=self._size)
            log.warning("video %s: frame %d is %dx%d but the video is %dx%d (the source changed size); "
                        "frames of this size are scaled to %dx%d on black bars", self.path, self._index,
                        w, h, self._size[1], self._size[0], where.resized[1], where.resized[0])
            if len(self._fits) >= 8:
                self._fits.pop(next(iter(self._fits)))
            fit = self._fits[(h, w)] = (np.zeros((*self._size, 3), np.uint8), where)
        canvas, where = fit
        (nh, nw), y, x = where.resized, where.top, where.left
        interpolation = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
        canvas[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=interpolation)
        return canvas

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"video {self.path} is already closed")
        image = result.rendered if result.rendered is not None else result.frame.image
        self._index = result.frame.index
        height, width = image.shape[:2]
        if self._container is None:
            self._open(height, width)
        elif (height, width) != self._size:
            image = self._fit(image)
        # BT.601, 16-235, into the same buffer each frame (from_ndarray copies it into the frame)
        self._yuv = cv2.cvtColor(np.ascontiguousarray(self._even(image)), cv2.COLOR_RGB2YUV_I420, dst=self._yuv)
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = self._ticks(result.frame.pts)
        frame.time_base = self.time_base
        self._frames.given(frame.pts, result.frame.index)
        self._encode(frame, f"at frame {self._index}")
        self.frames_written += 1
        now = time.monotonic()
        if self.min_free and (self._file.samples != self._counted or now - self._space_checked >= _SPACE_CHECK_SECONDS):
            self._space_checked = now
            self._watch_space()
        self._count()

    def _encode(self, frame: av.VideoFrame | None, when: str) -> None:
        assert self._container is not None and self._stream is not None
        try:
            for packet in self._stream.encode(frame):
                self._frames.muxed(packet.pts)  # before mux, which rebases it to the stream's time base
                self._container.mux(packet)
        except Exception as exc:  # a disk error (FragmentFile kept it) or FFmpeg refusing a packet
            raise self._fail(exc, when) from exc

    def _count(self) -> None:
        assert self._file is not None
        self._frames.update(self._file.samples)
        self._counted = self._file.samples

    def _watch_space(self) -> None:
        try:
            free = shutil.disk_usage(self._staged.path.parent).free
        except OSError:
            return
        if free >= self.min_free:
            return
        when = f"at frame {self._index}"
        self._finish(when)  # every frame given so far into the file while there is room
        self._keep()
        raise SinkError(f"video {self.path}: only {_mib(free)} left on the disk of {self._folder} {when}, below the "
                        f"{_mib(self.min_free)} kept free (min_free): stopped; {self._holds()}; free space and "
                        "run again")

    # -- the end ---------------------------------------------------------------------------------

    def _holds(self) -> str:
        if self.output is None:
            return "no frame had reached the disk, so no file is left"
        if self.frames_in_file == 0:
            return f"{self.output} holds no frame"
        return f"{self.output} holds frames {self._frames.first}..{self._frames.last} (playable)"

    def _keep(self) -> None:
        """Leave the file under its temporary name (a run that did not finish)."""
        self._closed = True
        self.output = self.partial

    def _fail(self, exc: BaseException, when: str) -> SinkError:
        """A write failed: cut the file back to what plays, keep it (or remove it), say so."""
        self._closed = True
        assert self._file is not None
        cause = self._file.error if self._file.error is not None else exc
        if self._file.fail():
            self.output = self.partial
        else:
            self._staged.discard()
        self._count()
        if self._container is not None:
            try:
                self._container.close()  # the file is marked closed: FFmpeg writes no trailer
            except Exception:  # freeing the muxer after its file failed
                pass
            self._container = self._stream = None
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "the disk is full" if cause.errno == errno.ENOSPC else "the disk quota is exceeded"
            error = SinkError(f"video {self.path}: {what} {when}; {self._holds()}; free space or write somewhere else")
        else:
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
            error = SinkError(f"video {self.path}: writing failed {when} ({reason}); {self._holds()}")
        error.__cause__ = cause
        return error

    def _finish(self, when: str) -> None:
        """Drain the encoder, write the index, put the rest on disk: every frame is in the file."""
        assert self._container is not None and self._file is not None
        self._encode(None, when)  # the encoder's look-ahead and B-frames
        try:
            self._container.close()  # the last fragment and the fragment index
            self._file.finish()
        except Exception as exc:
            raise self._fail(exc, when) from exc
        self._container = self._stream = None
        self._frames.all_in()

    def close(self) -> None:
        if self._closed:
            return
        if self._container is None:
            self._closed = True
            self._staged.discard()  # nothing was written: no file left, an existing target untouched
            return
        self._finish(f"while finishing, after frame {self._index}")
        self._closed = True
        if self._format in ("mp4", "mov"):
            self._faststart()
        else:
            self.output = self._staged.commit()

    def abort(self) -> Path | None:
        """Finish what was written but keep it under its ``.partial`` name: the run did not end well.
        Returns that file (None: no frame reached the disk, nothing is left)."""
        if not self._closed:
            if self._container is None:
                self.close()
                return None
            self._finish(f"while finishing, after frame {self._index}")
            self._keep()
        return self.output if self.output is not None and self.output != self.path else None

    def _faststart(self) -> None:
        assert self._file is not None
        self.output, reason = commit_faststart(self._staged, self._format, self.time_base,
                                               _track_timescale(self.time_base), self.frames_written,
                                               self._file.size + self.min_free)
        if reason is not None:
            log.warning("video %s: kept as fragmented MP4 (it plays; some editors and old players seek in it "
                        "slowly), not copied into an index-at-the-front MP4: %s", self.path, reason)
            self.fragmented = True

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
