"""What is wrong with a file FFmpeg will not read, said with the path and a remedy.

FFmpeg reports a missing file, an empty file, random bytes and an MP4 cut off before its
index alike as "Invalid data"; these checks tell them apart before or after it tries.
"""

from __future__ import annotations

import struct
from pathlib import Path

from segengine.errors import SourceError

_MP4_TOP_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"moof", b"mfra",
                            b"styp", b"sidx", b"pdin", b"meta"})


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


def mp4_top_boxes(path: Path, limit: int = 64) -> list[bytes] | None:
    """The top-level box types of an ISO-BMFF (MP4/MOV) file, or None when it is not one.

    A box whose declared size runs past the end of the file ends the walk: that is where a
    truncated file was cut.
    """
    size = path.stat().st_size
    boxes: list[bytes] = []
    with path.open("rb") as f:
        offset = 0
        while offset + 8 <= size and len(boxes) < limit:
            f.seek(offset)
            length, kind = struct.unpack(">I4s", f.read(8))
            if length == 1 and offset + 16 <= size:
                (length,) = struct.unpack(">Q", f.read(8))
            elif length == 0:
                length = size - offset  # the box runs to the end of the file
            if kind not in _MP4_TOP_BOXES or length < 8:
                return boxes if boxes else None
            boxes.append(kind)
            offset += length
    return boxes if boxes and boxes[0] in (b"ftyp", b"moov", b"mdat", b"free", b"wide") else None


def explain_unreadable(path: Path, detail: str) -> SourceError:
    """The error for a file FFmpeg could not open as media, naming the likely cause."""
    boxes = mp4_top_boxes(path)
    if boxes is not None and b"moov" not in boxes and b"moof" not in boxes:
        return SourceError(
            f"{path} is a truncated MP4/MOV: its index (the 'moov' box) is missing, so no frame can be "
            f"located. This happens when a recording is cut off before it is finalised (a crash, a full "
            f"disk, a copy that stopped). Re-copy or re-export it; a recorder should write fragmented MP4 "
            f"or put the index first (movflags=+faststart) so a cut file stays playable")
    return SourceError(f"{path} is not a media file FFmpeg can read (unknown or corrupt format: {detail}); "
                       f"pass a video such as .mp4/.mkv/.avi")
