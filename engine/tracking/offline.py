"""Re-tracking saved detections: a MOT, MOTS or segengine JSONL file in, the same format out.

Frames stream through ``MaskTracker.step`` one at a time (a frame with no detections still
steps, so lost tracks age), and tracks are written as they come. The output is staged beside
``dst`` (``segengine.sinks.staging``) and renamed onto it at the end, so a malformed line
half-way leaves no half-written results file behind to be scored by mistake, and an existing
``dst`` untouched. A cut-off last line (a file still being written, or cut by a crash) is no
failure: the frames before it are tracked and written, and ``TrackSummary.damaged`` says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segengine.errors import ConfigError
from segengine.rle import encode_mask
from segengine.sinks.staging import StagedFile
from segengine.tracking.association import BoxGrid
from segengine.tracking.base import TrackedObjects
from segengine.tracking.formats import FORMATS, GRID_FACTOR, Damage, FrameDets, detect_format, frame_rate, read_frames
from segengine.tracking.mask_tracker import MaskTracker, TrackerConfig
from segengine.tracking.writers import open_writer

_SUFFIXES = {"mot": ".txt", "mots": ".txt", "jsonl": ".jsonl"}


@dataclass(frozen=True)
class TrackSummary:
    src: Path
    dst: Path
    fmt: str
    fps: float  # what frame numbers were turned into seconds with (JSONL: only where pts is missing)
    frames: int
    detections: int
    tracks: int  # distinct track ids written
    rows: int  # (frame, track) rows written
    seconds: float
    damaged: str | None = None  # the input's last line was cut off: what, and how much was used

    def line(self) -> str:
        rate = "" if self.fmt == "jsonl" else f" at {self.fps:g} fps"
        return (f"{self.frames} frames{rate}, {self.detections} detections → {self.tracks} tracks "
                f"({self.rows} rows, {self.fmt}) in {self.seconds:.1f} s: {self.dst}")


def track_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, fmt: str = "auto",
               fps: float | None = None, config: TrackerConfig | None = None,
               progress: bool | None = None) -> TrackSummary:
    """Track every frame of ``src`` and write the tracks to ``dst`` in ``src``'s format.

    ``fps``: frame numbers → seconds for MOT/MOTS (None: seqinfo.ini's frameRate beside the
    file, else 25); JSONL uses its pts. ``progress``: a bar on stderr (None: when a terminal).
    """
    src, dst = Path(src), Path(dst)
    fmt = _check(src, dst, fmt)
    rate = frame_rate(src, fps)
    config = config or TrackerConfig()
    # boxes stay in frame pixels; the grid tells the tracker where they fall on the masks
    tracker = MaskTracker(config, grid=BoxGrid(1 / GRID_FACTOR, 1 / GRID_FACTOR))
    staged = StagedFile(dst, "tracks")  # proves the folder writable before any frame is read
    try:
        writer = open_writer(staged.path, fmt)
    except BaseException:
        staged.discard()
        raise
    frames = detections = 0
    ids: set[int] = set()
    damage = Damage()
    start = time.perf_counter()
    try:
        with tqdm(total=src.stat().st_size, unit="B", unit_scale=True, desc=f"track {src.name}",
                  disable=None if progress is None else not progress, file=sys.stderr, leave=False) as bar:
            for frame in read_frames(src, fmt, rate, bar.update, damage):
                tracks = tracker.step(frame.dets, frame.t)
                writer.write(frame, tracks, _track_masks(frame, tracks, smoothed=config.smoothing > 0))
                frames, detections = frames + 1, detections + len(frame.dets)
                ids.update(int(i) for i in tracks.track_ids)
        writer.close()
        staged.commit()
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            writer.close()
        staged.discard()
        raise
    damaged = None
    if damage:
        damaged = (f"{src} line {damage.line} is cut off (no newline at its end: the file was still being written, "
                   f"or cut by a crash) and was left out: {damage.reason}; the {frames} frames before it "
                   f"were tracked")
    return TrackSummary(src, dst, fmt, rate, frames, detections, len(ids), writer.rows,
                        time.perf_counter() - start, damaged)


def _check(src: Path, dst: Path, fmt: str) -> str:
    """The format to use, after refusing what would surely go wrong."""
    if not src.is_file():
        raise ConfigError(f"cannot read detections {src}: "
                          + ("it is a folder" if src.is_dir() else "no such file"))
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: expected auto, {', '.join(FORMATS)}")
    if dst.exists() and dst.samefile(src):
        raise ConfigError(f"{dst} is the detections file itself: write the tracks elsewhere")
    if not dst.parent.is_dir():
        raise ConfigError(f"cannot write tracks to {dst}: the folder does not exist")
    fmt = detect_format(src) if fmt == "auto" else fmt
    # the output follows the input's format: a .jsonl name for MOT text (or back) is a mistake
    suffix = dst.suffix.lower()
    if suffix in (".txt", ".jsonl") and suffix != _SUFFIXES[fmt]:
        raise ConfigError(f"{dst}: the tracks are written as {fmt} (the input's format), so the name "
                          f"should end in {_SUFFIXES[fmt]}")
    return fmt


def _track_masks(frame: FrameDets, tracks: TrackedObjects, *, smoothed: bool) -> list[dict[str, Any] | None]:
    """Each track row's mask at frame resolution: the tracker's smoothed mask brought up from the
    grid when smoothing is on; otherwise the detection's own RLE, exact, as read."""
    if smoothed and tracks.masks is not None and frame.grid is not None:
        return [encode_mask(frame.grid.up(m)) for m in tracks.masks]
    if frame.rles is not None:
        return [frame.rles[d] for d in tracks.detection]
    return [None] * len(tracks)
