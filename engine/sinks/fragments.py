"""Crash-safe video files: the bytes a muxer writes, put on disk one whole fragment at a time.

``VideoSink`` writes fragmented MP4/MOV (a ``moof`` + ``mdat`` pair about every second) or
Matroska (a ``Cluster`` about every second) through ``FragmentFile``, a file object handed to
PyAV. It walks the top-level structure as it arrives (MP4 boxes: a 4-byte size and a 4-byte type;
Matroska elements: an EBML id and a variable-length size) and holds the bytes back until the unit
they belong to is complete, then writes that unit with one ``os.write`` (and, by default, one
``os.fdatasync``). So:

- what is on disk is always whole units, and a SIGKILL or a power loss leaves a file that plays
  up to its last fragment (FFmpeg refuses to open an MP4 that ends inside a ``moof``, and stops
  decoding at an ``mdat`` cut short: a fragment cut in half is worse than none);
- a failed write is seen by the ``write`` call it happened in, never later: the error is kept
  (``error``) and the caller raises it on the frame being written;
- ``samples`` counts the frames (MP4 ``trun`` sample counts, Matroska blocks) in the complete
  units on disk, and ``playable_end`` is where the last one ends: after a failure the file is cut
  back to it (``fail``), or removed when it holds no frame.

Once the muxer seeks (Matroska patches its header at the end), units are no longer followed:
writes then go straight to the file at the muxer's position.

``FramesOnDisk`` turns the sample count into frames: the leading frames (in presentation order)
whose packets are all on disk, so a B-frame whose packet is still in the encoder or in the next
fragment is not counted although its reference is written.

``playable_prefix`` finds, in a file left by a killed run, where its last complete unit ends.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Layout = Literal["mp4", "mkv"]
# A unit bigger than this (a fragment of far more than a second of video, or a structure this walk
# does not know) is written through as it comes instead of being held in memory.
MAX_HELD = 256 << 20


@dataclass(frozen=True)
class Unit:
    """One complete top-level piece: its length in the buffer, and the frames it holds."""

    length: int
    samples: int = 0
    fragment: bool = False  # a moof+mdat pair or a Cluster: frames that play once it is on disk


class _Walker(Protocol):
    def next(self, buf: bytes | bytearray | memoryview, pos: int) -> Unit | None:
        """The complete unit starting at ``buf[pos]``, or None while it is incomplete.
        Raises ValueError for bytes that are not this layout."""


def _box(buf: bytes | bytearray | memoryview, pos: int) -> tuple[bytes, int, int] | None:
    """(type, header length, total size) of the MP4 box at ``pos``, None if its header is incomplete."""
    if len(buf) - pos < 8:
        return None
    size, kind = struct.unpack_from(">I4s", buf, pos)
    header = 8
    if size == 1:
        if len(buf) - pos < 16:
            return None
        (size,) = struct.unpack_from(">Q", buf, pos + 8)
        header = 16
    if size == 0:
        raise ValueError(f"box {kind!r} at {pos} runs to the end of the file")
    if size < header:
        raise ValueError(f"box {kind!r} at {pos} has size {size}")
    return bytes(kind), header, size


def _moof_samples(moof: bytes | bytearray | memoryview) -> int:
    """Frames in a moof: the sample counts of every trun of every traf."""
    samples = 0

    def children(start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        pos = start
        while pos < end:
            box = _box(moof, pos)
            if box is None or pos + box[2] > end:
                raise ValueError("moof with a truncated child box")
            yield box[0], pos + box[1], pos + box[2]
            pos += box[2]

    header = _box(moof, 0)
    assert header is not None
    for kind, start, end in children(header[1], len(moof)):
        if kind == b"traf":
            for child, cstart, _ in children(start, end):
                if child == b"trun":  # version+flags (4 bytes), then sample_count
                    samples += struct.unpack_from(">I", moof, cstart + 4)[0]
    return samples


class Mp4Walker:
    """MP4/MOV: ftyp, moov, free... are units of their own; a moof is held until its mdat is complete."""

    def next(self, buf: bytes | bytearray | memoryview, pos: int) -> Unit | None:
        box = _box(buf, pos)
        if box is None or len(buf) - pos < box[2]:
            return None
        kind, _, size = box
        if kind != b"moof":
            return Unit(size)
        mdat = _box(buf, pos + size)
        if mdat is None or len(buf) - pos - size < mdat[2]:
            return None
        if mdat[0] != b"mdat":
            raise ValueError(f"moof followed by {mdat[0]!r}, not mdat")
        return Unit(size + mdat[2], _moof_samples(bytes(buf[pos:pos + size])), fragment=True)


_EBML, _SEGMENT, _CLUSTER = 0x1A45DFA3, 0x18538067, 0x1F43B675
_SIMPLE_BLOCK, _BLOCK_GROUP = 0xA3, 0xA0


def _vint(buf: bytes | bytearray | memoryview, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``pos``: (value, length); ids keep their marker bits.
    A size whose bits are all ones (unknown) is returned as -1."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first == 0:
        raise ValueError(f"invalid EBML number at {pos}")
    length = 9 - first.bit_length()
    if len(buf) - pos < length:
        return None
    value = int.from_bytes(buf[pos:pos + length], "big")
    if keep_marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (-1 if value == (1 << (7 * length)) - 1 else value), length


def _element(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int] | None:
    """(id, header length, content size or -1) of the element at ``pos``; None while incomplete."""
    ident = _vint(buf, pos, keep_marker=True)
    if ident is None:
        return None
    size = _vint(buf, pos + ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], ident[1] + size[1], size[0]


class MkvWalker:
    """Matroska: the EBML header, the Segment's header (its content is walked as units), then each
    of the Segment's children: SeekHead, Info, Tracks, ..., every Cluster (frames: its blocks), Cues."""

    def __init__(self) -> None:
        self._in_segment = False

    def next(self, buf: bytes | bytearray | memoryview, pos: int) -> Unit | None:
        element = _element(buf, pos)
        if element is None:
            return None
        ident, header, size = element
        if ident == _SEGMENT and not self._in_segment:
            self._in_segment = True
            return Unit(header)  # descend: the Segment's children are the units
        if size < 0:
            raise ValueError(f"element {ident:#x} of unknown size at {pos}")
        if len(buf) - pos < header + size:
            return None
        if ident != _CLUSTER:
            return Unit(header + size)
        blocks, child, end = 0, pos + header, pos + header + size
        while child < end:
            sub = _element(buf, child)
            if sub is None or sub[2] < 0 or child + sub[1] + sub[2] > end:
                raise ValueError(f"cluster at {pos} with a truncated child")
            blocks += sub[0] in (_SIMPLE_BLOCK, _BLOCK_GROUP)
            child += sub[1] + sub[2]
        return Unit(header + size, blocks, fragment=True)


def walker(layout: Layout) -> _Walker:
    return Mp4Walker() if layout == "mp4" else MkvWalker()


class FragmentFile:
    """A write-only file object for PyAV that puts whole units on disk (see the module's text).

    ``samples``/``playable_end``: frames in, and the end of, the complete fragments on disk;
    ``size``: bytes on disk; ``error``: the OSError a write met (then ``closed`` is True, so PyAV
    writes no trailer into a file that cannot take it). ``sync``: fdatasync after each fragment,
    so a power loss keeps what was written too (a SIGKILL needs no sync).
    """

    def __init__(self, path: Path, layout: Layout, *, sync: bool = True) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._walker: _Walker | None = walker(layout)
        self._pending = bytearray()
        self._scan = 0  # bytes of _pending already walked into complete units
        self._pos = 0  # the muxer's position
        self._direct = False  # after a seek: no more units, writes go where the muxer says
        self.sync = sync
        self._dir_synced = False
        self.size = 0
        self.samples = 0
        self.fragments = 0
        self.playable_end = 0
        self.error: OSError | None = None
        self.closed = False

    # -- what PyAV calls ------------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        self._check()
        if self._direct:
            self._put(data, self._pos)
            self._pos += len(data)
            self.size = max(self.size, self._pos)
            return len(data)
        self._pending += data
        self._pos += len(data)
        self._walk()
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check()
        end = self.size + len(self._pending)
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self._pos + offset, os.SEEK_END: end + offset}[whence]
        if target != self._pos and not self._direct:
            self._drain()  # the muxer is patching what it wrote: units end here
            self._direct = True
        self._pos = target
        return target

    # -- the sink's side ------------------------------------------------------------------------

    def finish(self) -> None:
        """After the muxer's trailer: the rest to disk, synced, the file closed. Raises OSError."""
        if self._fd < 0:
            return
        self._drain()
        if self.sync:
            self._do_sync()
        self.playable_end = self.size
        self._close_fd()

    def fail(self) -> int:
        """After a failed write: cut the file back to its last complete fragment, close it, and
        return the bytes kept (0: nothing playable; the caller removes the file)."""
        self.closed = True
        keep = self.playable_end if self.samples else 0
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, keep)
            except OSError:
                pass
            self._close_fd()
        self._pending.clear()
        return keep

    # -- inside ---------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror)
        if self._fd < 0:
            raise OSError(errno.EBADF, "the video file is already closed")

    def _walk(self) -> None:
        flush, samples, fragments, playable = 0, 0, 0, -1
        try:
            while self._walker is not None and (unit := self._walker.next(self._pending, self._scan)) is not None:
                self._scan += unit.length
                flush = self._scan
                if unit.fragment:
                    samples, fragments, playable = samples + unit.samples, fragments + 1, self._scan
        except ValueError:
            self._walker = None  # not what this walk knows: from here on written as it comes
        if self._walker is None or len(self._pending) > MAX_HELD:
            self._walker, flush = None, len(self._pending)
        if not flush:
            return
        start = self.size
        self._put(bytes(self._pending[:flush]), start)  # a copy: no view of _pending outlives this
        self.size += flush
        del self._pending[:flush]
        self._scan = max(0, self._scan - flush)
        if fragments:
            if self.sync:
                self._do_sync()
            self.samples += samples
            self.fragments += fragments
            self.playable_end = start + playable

    def _drain(self) -> None:
        if self._pending:
            self._put(bytes(self._pending), self.size)
            self.size += len(self._pending)
            self._pending.clear()
        self._scan = 0

    def _put(self, data: bytes, offset: int) -> None:
        done = 0
        try:
            while done < len(data):  # a short write is followed by the one that says why
                done += os.pwrite(self._fd, data[done:] if done else data, offset + done)
        except OSError as exc:
            self.error, self.closed = exc, True
            raise

    def _do_sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self.error, self.closed = exc, True
            raise
        if not self._dir_synced:  # once: the new file's name survives a power loss too
            self._dir_synced = True
            try:  # best effort: some filesystems cannot sync a folder
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
            except OSError:
                pass

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class FramesOnDisk:
    """Frames given to the encoder (their pts ticks, in order), packets muxed (their pts, in decode
    order), samples on disk (``FragmentFile.samples``): ``count`` frames are in the file, the
    first ``first`` .. the last ``last`` (the frames' own indices)."""

    def __init__(self) -> None:
        self._given: deque[tuple[int, int]] = deque()  # (ticks, index), not yet known on disk
        self._muxed: deque[int] = deque()  # ticks of packets muxed, not yet on disk
        self._ahead: set[int] = set()  # ticks on disk whose frame waits for an earlier one
        self._samples = 0
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None

    def given(self, ticks: int, index: int) -> None:
        if self.first is None:
            self.first = index
        self._given.append((ticks, index))

    def muxed(self, ticks: int) -> None:
        self._muxed.append(ticks)

    def update(self, samples: int) -> None:
        for _ in range(min(samples - self._samples, len(self._muxed))):
            self._ahead.add(self._muxed.popleft())
        self._samples = samples
        given, ahead = self._given, self._ahead
        while given and given[0][0] in ahead:
            ticks, self.last = given.popleft()
            ahead.discard(ticks)
            self.count += 1

    def all_in(self) -> None:
        """The muxer finished the file: every frame given is in it."""
        self.count += len(self._given)
        if self._given:
            self.last = self._given[-1][1]
        self._given.clear()
        self._muxed.clear()
        self._ahead.clear()


def playable_prefix(path: str | os.PathLike[str], layout: Layout, chunk: int = 1 << 20) -> tuple[int, int]:
    """(bytes, frames) of the complete fragments at the start of a file left by a killed run,
    so that what follows them (a fragment cut short) can be cut off: ``os.truncate(path, bytes)``."""
    walk, buf, base, end, frames = walker(layout), bytearray(), 0, 0, 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            buf += data
            pos = 0
            try:
                while (unit := walk.next(buf, pos)) is not None:
                    pos += unit.length
                    if unit.fragment:
                        end, frames = base + pos, frames + unit.samples
            except ValueError:
                break
            del buf[:pos]
            base += pos
    return end, frames
