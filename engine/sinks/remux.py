"""A finished fragmented MP4/MOV copied into an ordinary one with the index at the front.

``VideoSink`` writes fragmented MP4 while running (it survives a crash); at a clean end it is
copied packet by packet (stream copy, no re-encoding: I/O bound) into an ordinary MP4 with
``+faststart``, which every player and editor seeks in at once, and that copy is committed onto the
target. When the copy cannot be made (too little free space for a second copy, or it fails), the
fragmented file itself is committed: it plays everywhere that matters, and the caller says why.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av

from segengine.sinks.staging import StagedFile


def remux_faststart(src: Path, dst: Path, fmt: str, time_base: Fraction, movie_timescale: int) -> int:
    """Copy the video stream of ``src`` (fragmented) into ``dst`` as an ordinary MP4/MOV with the
    index at the front; timestamps as they are (the movie timescale is the track's, so the edit
    list placing a first pts > 0 is exact). Returns the packets copied. Raises OSError/av errors."""
    copied = 0
    with av.open(str(src)) as inp:
        source = inp.streams.video[0]
        options = {"movflags": "+faststart", "movie_timescale": str(movie_timescale)}
        with av.open(str(dst), "w", format=fmt, options=options) as out:
            stream = out.add_stream_from_template(source)
            stream.time_base = source.time_base or time_base
            for packet in inp.demux(source):
                if packet.dts is None:  # the demuxer's end-of-stream packet
                    continue
                packet.stream = stream
                out.mux(packet)
                copied += 1
    return copied


def mib(size: int) -> str:
    """A size for messages."""
    return f"{size / (1 << 20):.1f} MiB" if size < 1 << 30 else f"{size / (1 << 30):.2f} GiB"


def commit_faststart(fragmented: StagedFile, fmt: str, time_base: Fraction, movie_timescale: int,
                     frames: int, needs: int) -> tuple[Path, str | None]:
    """Commit ``fragmented`` (finished) onto its target as an ordinary MP4 when ``needs`` bytes are
    free beside it, else as it is. Returns the target and, when it stayed fragmented, why."""
    try:
        free: int | None = shutil.disk_usage(fragmented.path.parent).free
    except OSError:
        free = None
    if free is not None and free < needs:
        return fragmented.commit(), f"{mib(free)} free is too little for the copy ({mib(needs)} needed)"
    copy: StagedFile | None = None
    try:
        copy = StagedFile(fragmented.target, what="video")
        copied = remux_faststart(fragmented.path, copy.path, fmt, time_base, movie_timescale)
        if copied != frames:
            raise ValueError(f"the copy has {copied} frames, not {frames}")
        target = copy.commit()
    except Exception as exc:  # the fragmented file plays: keep it, say why
        if copy is not None:
            copy.discard()
        return fragmented.commit(), f"the copy failed: {exc}"
    fragmented.discard()
    return target, None
