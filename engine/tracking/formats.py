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
"""

from __future__ import annotations

import configparser
import json
import math
import re
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

FORMATS = ("mot", "mots", "jsonl")
GRID_FACTOR = 4  # masks go to the tracker at 1/4 resolution: 16× less work per mask IoU
MOT_CLASS = 1  # MOTChallenge's "pedestrian": MOT boxes carry no class of their own
MOTS_IGNORE_CLASS = 10
_RLE_COUNTS = re.compile(r"[0-o]+")  # pycocotools' compressed counts: characters 48 ('0') to 111 ('o')
OnBytes = Callable[[int], None]


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
    for lineno, text in _lines(path):
        if text.startswith("{"):
            return "jsonl"
        if "," in text:
            return "mot"
        fields = text.split()
        if len(fields) == 6 or (len(fields) == 7 and not _is_number(fields[-1])):
            return "mots"
        if len(fields) >= 7 and all(_is_number(v) for v in fields):
            return "mot"  # MOT written with spaces, as some tools do
        raise ConfigError(f"{path} line {lineno}: cannot tell the format: expected MOT "
                          f"(frame,id,x,y,w,h,conf,...), MOTS (frame id class_id height width rle) or a "
                          f"JSON object; got {_clip(text)}. Name it with --format mot|mots|jsonl")
    return "mot" if path.suffix.lower() == ".txt" else "jsonl"


def frame_rate(path: Path, fps: float | None) -> float:
    """``fps`` when given, else ``frameRate`` from a MOTChallenge seqinfo.ini beside the file
    (or one folder up: seq/det/det.txt, seq/seqinfo.ini), else 25."""
    if fps is not None:
        if not fps > 0:
            raise ConfigError(f"--fps must be positive, got {fps}")
        return float(fps)
    for ini in (path.parent / "seqinfo.ini", path.parent.parent / "seqinfo.ini"):
        if ini.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read(ini)
                rate = float(parser["Sequence"]["frameRate"])
            except (configparser.Error, KeyError, ValueError) as exc:
                raise ConfigError(f"{ini}: expected [Sequence] frameRate=<number>: {exc}") from None
            if rate > 0:
                return rate
    return 25.0


def read_frames(path: Path, fmt: str, fps: float, on_bytes: OnBytes | None = None) -> Iterator[FrameDets]:
    readers = {"mot": _read_mot, "mots": _read_mots, "jsonl": _read_jsonl}
    if fmt not in readers:
        raise ConfigError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return readers[fmt](path, fps, on_bytes)


# --- reading -------------------------------------------------------------------------------

def _lines(path: Path, on_bytes: OnBytes | None = None) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines; bytes go to ``on_bytes`` for progress."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if on_bytes is not None:
                on_bytes(len(raw))
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"{path} line {lineno}: expected text, got bytes that are not UTF-8") from None
            if text:
                yield lineno, text


def _by_frame(path: Path, rows: Iterator[tuple[int, int, Any]]) -> Iterator[tuple[int, list[Any]]]:
    """Group (line, frame, item) rows into frames, yielding the empty frames in between too."""
    frame, items, last_line = None, [], 0
    for lineno, f, item in rows:
        if frame is not None and f < frame:
            raise ConfigError(f"{path} line {lineno}: frame {f} comes after frame {frame} (line {last_line}): "
                              f"the file must be sorted by frame; sort it first, e.g. "
                              f"sort -s -n -t, -k1,1 (MOT) or sort -s -n -k1,1 (MOTS)")
        if frame is not None and f > frame:
            yield frame, items
            for gap in range(frame + 1, f):
                yield gap, []
            items = []
        frame, last_line = f, lineno
        items.append(item)
    if frame is not None:
        yield frame, items


def _read_mot(path: Path, fps: float, on_bytes: OnBytes | None) -> Iterator[FrameDets]:
    def rows() -> Iterator[tuple[int, int, tuple[float, ...]]]:
        for lineno, text in _lines(path, on_bytes):
            fields = [v.strip() for v in text.split(",")] if "," in text else text.split()
            try:
                frame, values = _frame_number(fields[0]), [float(v) for v in fields[2:7]]
                if len(fields) < 7 or not all(map(math.isfinite, values)) or min(values[2:4]) < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise ConfigError(f"{path} line {lineno}: expected MOT fields frame,id,x,y,w,h,conf[,x,y,z] "
                                  f"(at least 7 numbers, w and h not negative), got {_clip(text)}") from None
            yield lineno, frame, tuple(values)

    for frame, items in _by_frame(path, rows()):
        a = np.array(items, np.float64).reshape(-1, 5)
        boxes = np.concatenate([a[:, :2], a[:, :2] + a[:, 2:4]], axis=1)
        dets = Detections(boxes, a[:, 4].copy(), np.full(len(a), MOT_CLASS, np.int64))
        yield FrameDets(frame, frame / fps, dets)


def _read_mots(path: Path, fps: float, on_bytes: OnBytes | None) -> Iterator[FrameDets]:
    def rows() -> Iterator[tuple[int, int, tuple[int, float, dict[str, Any], int]]]:
        for lineno, text in _lines(path, on_bytes):
            fields = text.split()
            try:
                if len(fields) not in (6, 7):
                    raise ValueError
                score = float(fields[3]) if len(fields) == 7 else 1.0
                frame, class_id = _frame_number(fields[0]), int(fields[2])
                h, w = int(fields[-3]), int(fields[-2])
                if h <= 0 or w <= 0 or not math.isfinite(score):
                    raise ValueError
                if not _RLE_COUNTS.fullmatch(fields[-1]):
                    raise ValueError
                rle = {"size": [h, w], "counts": fields[-1]}
            except ValueError:
                raise ConfigError(f"{path} line {lineno}: expected MOTS fields 'frame id class_id height width "
                                  f"rle' or 'frame -1 class_id score height width rle', got {_clip(text)}") from None
            if class_id != MOTS_IGNORE_CLASS:
                yield lineno, frame, (class_id, score, rle, lineno)

    grid: MaskGrid | None = None
    for frame, items in _by_frame(path, rows()):
        rles = [rle for _, _, rle, _ in items]
        grid = _grid(path, frame, grid, [tuple(r["size"]) for r in rles])
        masks = _grid_masks(path, grid, rles, [n for *_, n in items])
        # boxes from the masks' extent, as the MOTS files have none
        xywh = np.array([mask_utils.toBbox(to_coco(r)) for r in rles], np.float64).reshape(-1, 4)
        dets = Detections(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                          np.array([s for _, s, _, _ in items], np.float64),
                          np.array([c for c, *_ in items], np.int64), masks)
        yield FrameDets(frame, frame / fps, dets, rles, grid)


def instance_layer(record: dict[str, Any]) -> str | None:
    """The name of a segengine JSON line's first instances layer (schema 2), or None."""
    layers = record.get("layers")
    if not isinstance(layers, dict):
        return None
    return next((name for name, layer in layers.items() if isinstance(layer, dict)
                 and layer.get("kind") == "instances"), None)


def instance_items(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    name = instance_layer(record)
    return None if name is None else record["layers"][name]["items"]


def _read_jsonl(path: Path, fps: float, on_bytes: OnBytes | None) -> Iterator[FrameDets]:
    grid: MaskGrid | None = None
    stream: str | None = None
    for lineno, text in _lines(path, on_bytes):
        try:
            record = json.loads(text)
            if isinstance(record, dict) and "layers" not in record and "instances" in record:
                raise ValueError("written by an older segengine (schema 1, top-level instances): run "
                                 "`segengine run` again to write schema 2")
            frame, size = _frame_number(record["frame"]), tuple(int(v) for v in record["size"])
            pts = record.get("pts")
            t = float(pts) if isinstance(pts, (int, float)) else frame / fps
            found = instance_items(record) or []
            boxes = np.array([[float(v) for v in i["box"]] for i in found], np.float64).reshape(-1, 4)
            scores = np.array([float(i["score"]) for i in found], np.float64)
            class_ids = np.array([int(i["class_id"]) for i in found], np.int64)
            given = [i.get("mask") for i in found]
            if len(size) != 2 or min(size) <= 0 or boxes.shape != (len(found), 4):
                raise ValueError("bad size or box")
            if not all(m is None or (tuple(m["size"]) == size and m["counts"]) for m in given):
                raise ValueError(f"a mask is not an RLE of the frame's size {list(size)}")
            stream = stream if stream is not None else record.get("stream")
            if record.get("stream") != stream:  # one tracker, one video: ids across streams mean nothing
                raise ValueError(f"stream {record.get('stream')!r} after stream {stream!r}: split the file by stream")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} line {lineno}: expected a segengine JSON line: frame, size [h, w] and "
                              f"an instances layer whose items have box [x1, y1, x2, y2], score, class_id and "
                              f"an optional mask RLE "
                              f"({type(exc).__name__}: {exc}), got {_clip(text)}") from None
        rles = None
        if any(m is not None for m in given):
            grid = _grid(path, frame, grid, [size])
            # a rare instance with no mask gets its box as one, so the frame's masks stay N×h×w
            rles = [m if m is not None else encode_mask(_box_mask(size, b)) for m, b in zip(given, boxes)]
        if rles:
            masks = _grid_masks(path, grid, rles, [lineno] * len(rles))
        else:  # an empty frame of a masked run still has masks: 0×h×w
            masks = np.zeros((0, *grid.shape), np.uint8) if grid is not None and not found else None
        dets = Detections(boxes, scores, class_ids, masks)
        yield FrameDets(frame, t, dets, rles, grid, record)


def _grid(path: Path, frame: int, grid: MaskGrid | None, sizes: list[tuple[int, ...]]) -> MaskGrid | None:
    """The run's mask grid, fixed by the first masks seen: the tracker needs one resolution."""
    for size in sizes:
        if grid is None:
            grid = MaskGrid((int(size[0]), int(size[1])))
        elif tuple(size) != grid.frame_size:
            raise ConfigError(f"{path}: frame {frame} has masks of size {list(size)} but earlier frames "
                              f"{list(grid.frame_size)}: one file must keep one frame size")
    return grid


def _grid_masks(path: Path, grid: MaskGrid | None, rles: list[dict[str, Any]], lines: list[int]) -> np.ndarray | None:
    if grid is None:
        return None
    out = np.zeros((len(rles), *grid.shape), np.uint8)
    for k, (rle, lineno) in enumerate(zip(rles, lines)):
        try:
            coco = to_coco(rle)
            full = mask_utils.decode(coco)  # uint8 0/1: only its box is read, so no bool copy of it all
            box = mask_utils.toBbox(coco)
            # pycocotools refuses runs longer than height × width but leaves the rest of the mask
            # uninitialised when they fall short: garbage shows as pixels that no run set
            if np.count_nonzero(full) != mask_utils.area(coco):
                raise ValueError
        except (ValueError, TypeError):
            raise ConfigError(f"{path} line {lineno}: expected a COCO RLE mask of {rle.get('size')}, "
                              f"got counts {_clip(str(rle.get('counts')))}") from None
        out[k] = grid.down(full, box)
    return out


def _box_mask(size: tuple[int, ...], box: np.ndarray) -> np.ndarray:
    m = np.zeros(size, bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def _frame_number(value: Any) -> int:
    f = float(value)
    if f != int(f) or f < 0:
        raise ValueError(f"frame {value!r} is not a whole number ≥ 0")
    return int(f)


def to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
