"""Detections in, tracks out, in the community's files: MOTChallenge boxes, MOTS masks, our JSONL.

Every reader streams one frame at a time (a detections file can be hours long) and yields a
``FrameDets``: the frame's ``Detections`` (boxes xyxy in frame pixels; masks, when the format has
them, area-downsampled by ``GRID_FACTOR`` so the tracker's mask IoU stays cheap) plus what a
writer needs to write the frame back in the same format (the exact frame-resolution RLEs, the
JSONL line itself).

MOTChallenge (``frame,id,x,y,w,h,conf,x,y,z``; 7 or more fields; det.txt has id -1): frame
numbers are kept as they are (1-based in the benchmark); a frame with no detections is still
yielded, so time passes in the tracker. Lines must be sorted by frame, as every MOT file is;
an unsorted file is refused with the ``sort`` command that fixes it, since sorting here would
mean holding the whole file. Boxes have no class; they all get ``MOT_CLASS``.

MOTS (``frame id class_id height width rle``, the KITTI-MOTS / MOTS20 txt layout; detections may
carry a score column: ``frame -1 class_id score height width rle``). Output ids follow the
MOTS convention (vision.rwth-aachen.de/page/mots, "MOTS-format"): ``id = class_id * 1000 +
instance``, so ``class_id = id // 1000`` and ``instance = id % 1000``; instances are numbered per
class from 1 in order of first appearance (at most 999 a class). Class 10 (id 10000) marks
ignore regions in ground truth and is skipped on input. The MOTS evaluators refuse overlapping
masks in a frame, so where written masks overlap the higher-scoring track keeps the pixels.

Every number is held to the bounds of :mod:`segengine.tracking.limits` (a bad line is a
ConfigError naming the file and line); a cut-off last line is left out and noted in a ``Damage``
(:mod:`segengine.tracking.lines`).
"""

from __future__ import annotations

import configparser
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segengine.errors import ConfigError
from segengine.rle import encode_mask
from segengine.tracking.base import Detections
from segengine.tracking.jsonl_lines import Record, instance_layer, parse_record
from segengine.tracking.limits import (
    MAX_CLASS_ID,
    MAX_DETECTIONS,
    MAX_FPS,
    MAX_FRAME_GAP,
    MAX_FRAME_MASK_CELLS,
    MIN_FPS,
)
from segengine.tracking.lines import (
    RLE_COUNTS,
    Damage,
    Line,
    OnBytes,
    clip,
    coordinate,
    frame_number,
    integer,
    is_number,
    mask_size,
    number,
    parsed,
    read_lines,
    rle_error,
)

__all__ = ["FORMATS", "GRID_FACTOR", "Damage", "FrameDets", "MaskGrid", "detect_format", "frame_rate",
           "instance_layer", "read_frames", "to_coco"]

FORMATS = ("mot", "mots", "jsonl")
GRID_FACTOR = 4  # masks go to the tracker at 1/4 resolution: 16× less work per mask IoU
MOT_CLASS = 1  # MOTChallenge's "pedestrian": MOT boxes carry no class of their own
MOTS_IGNORE_CLASS = 10


@dataclass(frozen=True)
class MaskGrid:
    """The coarse grid a frame's masks are tracked on: each cell is ``factor``² frame pixels."""

    frame_size: tuple[int, int]  # (height, width)
    factor: int = GRID_FACTOR

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.frame_size
        return -(-h // self.factor), -(-w // self.factor)

    def down(self, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        """uint8 grid mask: each cell's coverage ×255 (an area downsample; ≥ 128 where at least
        half covered, as the tracker thresholds it, and soft edges for its mask smoothing).
        Computed only around ``box`` (xywh), so a small object in a 1080p frame costs little."""
        f, (h, w) = self.factor, self.frame_size
        out = np.zeros(self.shape, np.uint8)
        x, y, bw, bh = box
        if bw <= 0 or bh <= 0:
            return out
        gx0, gy0 = int(x) // f, int(y) // f
        gx1, gy1 = -(-math.ceil(x + bw) // f), -(-math.ceil(y + bh) // f)
        window = np.zeros(((gy1 - gy0) * f, (gx1 - gx0) * f), np.uint8)
        crop = mask[gy0 * f:min(gy1 * f, h), gx0 * f:min(gx1 * f, w)]
        window[:crop.shape[0], :crop.shape[1]] = crop
        cover = window.reshape(gy1 - gy0, f, gx1 - gx0, f).sum((1, 3), dtype=np.int32)
        out[gy0:gy1, gx0:gx1] = (cover * 255 + f * f // 2) // (f * f)
        return out

    def up(self, prob: np.ndarray) -> np.ndarray:
        """bool frame mask from a grid of uint8 probabilities ×255: bilinear, so smoothed edges
        stay smooth, thresholded at 128. Column-major, as pycocotools encodes it without a copy,
        and resized only around the nonzero cells."""
        (h, w), f = self.frame_size, self.factor
        out = np.zeros((w, h), bool).T
        rows, cols = np.flatnonzero(prob.any(1)), np.flatnonzero(prob.any(0))
        if len(rows):
            # one zero cell of margin: past it a whole-grid resize is zero too, so this is exact
            r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, prob.shape[0])
            c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, prob.shape[1])
            big = cv2.resize(prob[r0:r1, c0:c1], ((c1 - c0) * f, (r1 - r0) * f), interpolation=cv2.INTER_LINEAR)
            window = out[r0 * f:r1 * f, c0 * f:c1 * f]
            window[...] = big[:window.shape[0], :window.shape[1]] >= 128
        return out


@dataclass(frozen=True, eq=False)
class FrameDets:
    """One frame read from a detections file."""

    frame: int  # the file's own frame number, written back unchanged
    t: float  # seconds
    dets: Detections
    rles: list[dict[str, Any]] | None = None  # per detection, exact, at frame resolution
    grid: MaskGrid | None = None  # what dets.masks are on
    record: dict[str, Any] | None = None  # JSONL: the input line, passed through on output


def detect_format(path: Path) -> str:
    """``jsonl`` by extension or a leading ``{``; otherwise MOT (commas) or MOTS (6–7 fields
    separated by spaces), from the first line that is not blank."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    for line in read_lines(path):
        text = line.text
        if text.startswith("{"):
            return "jsonl"
        if "," in text:
            return "mot"
        fields = text.split()
        if len(fields) == 6 or (len(fields) == 7 and not is_number(fields[-1])):
            return "mots"
        if len(fields) >= 7 and all(is_number(v) for v in fields):
            return "mot"  # MOT written with spaces, as some tools do
        raise line.error(f"cannot tell the format: expected MOT (frame,id,x,y,w,h,conf,...), MOTS (frame id "
                         f"class_id height width rle) or a JSON object; got {clip(text, 80)}. "
                         f"Name it with --format mot|mots|jsonl")
    return "mot" if path.suffix.lower() == ".txt" else "jsonl"


def frame_rate(path: Path, fps: float | None) -> float:
    """``fps`` when given, else ``frameRate`` from a MOTChallenge seqinfo.ini beside the file
    (or one folder up: seq/det/det.txt, seq/seqinfo.ini), else 25."""
    bounds = f"{MIN_FPS:g} … {MAX_FPS:,.0f}"
    if fps is not None:
        if not fps > 0:
            raise ConfigError(f"--fps must be positive, got {fps}")
        if not MIN_FPS <= fps <= MAX_FPS:  # frame / fps must stay a time the tracker can step by
            raise ConfigError(f"--fps {fps:g} is out of range: expected {bounds}")
        return float(fps)
    for ini in (path.parent / "seqinfo.ini", path.parent.parent / "seqinfo.ini"):
        if ini.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read(ini)
                rate = number(parser["Sequence"]["frameRate"].strip(), "frameRate")
            except (configparser.Error, KeyError, ValueError) as exc:
                raise ConfigError(f"{ini}: expected [Sequence] frameRate=<number>: {exc}") from None
            if rate > 0:
                if not MIN_FPS <= rate <= MAX_FPS:
                    raise ConfigError(f"{ini}: frameRate {rate:g} is out of range: expected {bounds} "
                                      f"(or give --fps)")
                return rate
    return 25.0


def read_frames(path: Path, fmt: str, fps: float, on_bytes: OnBytes | None = None,
                damage: Damage | None = None) -> Iterator[FrameDets]:
    """The frames of ``path`` in order. ``damage``: where a cut-off last line is noted (the
    frames before it are yielded); without one it is a ConfigError like any bad line."""
    readers = {"mot": _read_mot, "mots": _read_mots, "jsonl": _read_jsonl}
    if fmt not in readers:
        raise ConfigError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return readers[fmt](path, fps, on_bytes, damage)


# --- reading -------------------------------------------------------------------------------

def _by_frame(rows: Iterator[tuple[Line, tuple[int, Any]]],
              limit: Callable[[], int] = lambda: MAX_DETECTIONS) -> Iterator[tuple[int, list[Any]]]:
    """Group (line, (frame, item)) rows into frames, yielding the empty frames in between too;
    ``limit()``: the most items a frame may have."""
    frame, items, last_line = None, [], 0
    for line, (f, item) in rows:
        if frame is not None and f < frame:
            raise line.error(f"frame {f} comes after frame {frame} (line {last_line}): the file must be sorted "
                             f"by frame; sort it first, e.g. sort -s -n -t, -k1,1 (MOT) or sort -s -n -k1,1 (MOTS)")
        if frame is not None and f > frame:
            if f - frame > MAX_FRAME_GAP:  # each frame between is a tracker step: bound the time it takes
                raise line.error(f"frame {f} comes {f - frame:,} frames after frame {frame} (line {last_line}), "
                                 f"over the {MAX_FRAME_GAP:,} (≈ 2.8 h at 25 fps) a file may skip: a frame number "
                                 f"is wrong, or split the file there")
            yield frame, items
            yield from ((gap, []) for gap in range(frame + 1, f))
            items = []
        frame, last_line = f, line.number
        if len(items) >= limit():
            raise line.error(f"frame {f} has more than {limit():,} detections, the most a frame may have "
                             f"(at most {MAX_DETECTIONS:,}, fewer for big masks); is the frame column right?")
        items.append(item)
    if frame is not None:
        yield frame, items


def _mot_row(line: Line) -> tuple[int, tuple[float, ...]]:
    text = line.text
    fields = [v.strip() for v in text.split(",")] if "," in text else text.split()
    try:
        if len(fields) < 7:
            raise ValueError(f"{len(fields)} fields")
        frame = frame_number(fields[0])
        number(fields[1], "id")
        x, y, w, h = (coordinate(v, name) for v, name in zip(fields[2:6], "xywh"))
        if w < 0 or h < 0:
            raise ValueError("w or h is negative")
        conf = number(fields[6], "conf")
    except ValueError as exc:
        raise line.error(f"expected MOT fields frame,id,x,y,w,h,conf[,x,y,z] (at least 7 numbers, w and h not "
                         f"negative): {exc}; got {clip(text, 80)}") from None
    return frame, (x, y, w, h, conf)


def _read_mot(path: Path, fps: float, on_bytes: OnBytes | None, damage: Damage | None) -> Iterator[FrameDets]:
    for frame, items in _by_frame(parsed(read_lines(path, on_bytes), _mot_row, damage)):
        a = np.array(items, np.float64).reshape(-1, 5)
        boxes = np.concatenate([a[:, :2], a[:, :2] + a[:, 2:4]], axis=1)
        dets = Detections(boxes, a[:, 4].copy(), np.full(len(a), MOT_CLASS, np.int64))
        yield FrameDets(frame, frame / fps, dets)


def _read_mots(path: Path, fps: float, on_bytes: OnBytes | None, damage: Damage | None) -> Iterator[FrameDets]:
    grid: MaskGrid | None = None  # fixed by the first mask: the tracker needs one resolution

    def row(line: Line) -> tuple[int, tuple[int, float, dict[str, Any], int]] | None:
        nonlocal grid
        text = line.text
        fields = text.split()
        try:
            if len(fields) not in (6, 7):
                raise ValueError(f"{len(fields)} fields")
            frame = frame_number(fields[0])
            integer(fields[1], "id", -1, 1 << 62)
            class_id = integer(fields[2], "class_id", 0, MAX_CLASS_ID)
            score = number(fields[3], "score") if len(fields) == 7 else 1.0
            h, w = integer(fields[-3], "height", 0, 1 << 62), integer(fields[-2], "width", 0, 1 << 62)
            if (why := mask_size(h, w)) is not None:
                raise ValueError(why)
            if not RLE_COUNTS.fullmatch(fields[-1]):
                raise ValueError("the rle is not a compressed COCO RLE (characters '0' to 'o')")
        except ValueError as exc:
            raise line.error(f"expected MOTS fields 'frame id class_id height width rle' or 'frame -1 class_id "
                             f"score height width rle': {exc}; got {clip(text, 80)}") from None
        if (why := rle_error(fields[-1], h * w)) is not None:
            raise line.error(f"expected a COCO RLE mask of [{h}, {w}]: {why}; got counts {clip(fields[-1], 80)}")
        if class_id == MOTS_IGNORE_CLASS:
            return None
        if grid is not None and (h, w) != grid.frame_size:
            raise line.error(f"a mask of size [{h}, {w}] but earlier lines' are {list(grid.frame_size)}: one file "
                             f"must keep one frame size")
        grid = grid or MaskGrid((h, w))
        return frame, (class_id, score, {"size": [h, w], "counts": fields[-1]}, line.number)

    def limit() -> int:
        return MAX_DETECTIONS if grid is None else min(MAX_DETECTIONS, _mask_budget(grid))

    for frame, items in _by_frame(parsed(read_lines(path, on_bytes), row, damage), limit):
        rles = [rle for _, _, rle, _ in items]
        masks = _grid_masks(path, grid, rles, [n for *_, n in items])
        # boxes from the masks' extent, as the MOTS files have none
        xywh = np.array([mask_utils.toBbox(to_coco(r)) for r in rles], np.float64).reshape(-1, 4)
        dets = Detections(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                          np.array([s for _, s, _, _ in items], np.float64),
                          np.array([c for c, *_ in items], np.int64), masks)
        yield FrameDets(frame, frame / fps, dets, rles, grid)


def _read_jsonl(path: Path, fps: float, on_bytes: OnBytes | None, damage: Damage | None) -> Iterator[FrameDets]:
    grid: MaskGrid | None = None  # fixed by the first masks: the tracker needs one resolution
    streams: list[Any] = []  # the first line's stream

    def check(line: Line) -> Record:
        nonlocal grid
        rec = parse_record(line)
        stream = rec.record.get("stream")
        if streams and stream != streams[0]:  # one tracker, one video: ids across streams mean nothing
            raise line.error(f"stream {stream!r} after stream {streams[0]!r}: split the file by stream")
        if rec.items and (grid is not None or any(m is not None for m in rec.masks)):
            if grid is not None and rec.size != grid.frame_size:
                raise line.error(f"frame {rec.frame} has masks of size {list(rec.size)} but earlier frames "
                                 f"{list(grid.frame_size)}: one file must keep one frame size")
            if len(rec.items) > _mask_budget(MaskGrid(rec.size)):
                raise line.error(f"{len(rec.items):,} masks of {list(rec.size)}: over the {MAX_FRAME_MASK_CELLS:,} "
                                 f"cells of the tracker's grid a frame's masks may take")
            grid = grid or MaskGrid(rec.size)
        streams[:1] = [stream]
        return rec

    for line, rec in parsed(read_lines(path, on_bytes), check, damage):
        found = rec.items
        boxes = np.array([i["box"] for i in found], np.float64).reshape(-1, 4)
        scores = np.array([i["score"] for i in found], np.float64)
        class_ids = np.array([i["class_id"] for i in found], np.int64)
        rles = None
        if found and grid is not None:
            # an instance with no mask gets its box as one, so the frame's masks stay N×h×w
            rles = [m if m is not None else encode_mask(_box_mask(rec.size, b)) for m, b in zip(rec.masks, boxes)]
            masks = _grid_masks(path, grid, rles, [line.number] * len(rles))
        else:  # an empty frame of a masked run still has masks: 0×h×w
            masks = np.zeros((0, *grid.shape), np.uint8) if grid is not None else None
        dets = Detections(boxes, scores, class_ids, masks)
        t = rec.pts if rec.pts is not None else rec.frame / fps
        yield FrameDets(rec.frame, t, dets, rles, grid, rec.record)


def _mask_budget(grid: MaskGrid) -> int:
    """How many masks of a frame fit in the tracker's memory bound (limits.py)."""
    return MAX_FRAME_MASK_CELLS // (grid.shape[0] * grid.shape[1])


def _grid_masks(path: Path, grid: MaskGrid | None, rles: list[dict[str, Any]], lines: list[int]) -> np.ndarray | None:
    if grid is None:
        return None
    out = np.zeros((len(rles), *grid.shape), np.uint8)
    for k, (rle, lineno) in enumerate(zip(rles, lines)):
        try:
            coco = to_coco(rle)
            full = mask_utils.decode(coco)  # uint8 0/1: only its box is read, so no bool copy of it all
            box = mask_utils.toBbox(coco)
            # the runs were checked to add up (lines.rle_error); this only guards pycocotools itself
            if np.count_nonzero(full) != mask_utils.area(coco):
                raise ValueError
        except (ValueError, TypeError):
            raise ConfigError(f"{path} line {lineno}: expected a COCO RLE mask of {rle.get('size')}, "
                              f"got counts {clip(str(rle.get('counts')), 80)}") from None
        out[k] = grid.down(full, box)
    return out


def _box_mask(size: tuple[int, ...], box: np.ndarray) -> np.ndarray:
    m = np.zeros(size, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
