"""Writing re-tracked detections back in the format they came in: MOT, MOTS or the engine's JSONL.

The layouts and the MOTS id convention are described in :mod:`segengine.tracking.formats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pycocotools import mask as mask_utils

from segengine.errors import ConfigError
from segengine.rle import encode_mask
from segengine.sinks.jsonl import JsonlSink
from segengine.tracking.base import TrackedObjects
from segengine.tracking.formats import FORMATS, FrameDets, instance_layer, to_coco


class TrackWriter(Protocol):
    rows: int  # (frame, track) rows written so far

    def write(self, frame: FrameDets, tracks: TrackedObjects, rles: Sequence[dict[str, Any] | None]) -> None:
        """``rles``: each track row's frame-resolution mask (None where there is none)."""
        ...

    def close(self) -> None: ...


def open_writer(path: Path, fmt: str) -> TrackWriter:
    writers: dict[str, Callable[[Path], TrackWriter]] = {"mot": MotWriter, "mots": MotsWriter, "jsonl": JsonlWriter}
    if fmt not in writers:
        raise ConfigError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return writers[fmt](path)


class _TextWriter:
    def __init__(self, path: Path) -> None:
        self.rows = 0
        try:
            self._f = open(path, "w", encoding="ascii", newline="\n")
        except OSError as exc:
            raise ConfigError(f"cannot write tracks to {path}: {exc.strerror}") from exc

    def close(self) -> None:
        self._f.close()


class MotWriter(_TextWriter):
    """``frame,id,x,y,w,h,conf,-1,-1,-1``: the MOTChallenge results layout."""

    def write(self, frame: FrameDets, tracks: TrackedObjects, rles: Sequence[dict[str, Any] | None]) -> None:
        for tid, box, score in zip(tracks.track_ids, tracks.boxes, tracks.scores):
            x, y = box[0], box[1]
            values = ",".join(_num(v) for v in (x, y, box[2] - x, box[3] - y, score))
            self._f.write(f"{frame.frame},{int(tid)},{values},-1,-1,-1\n")
            self.rows += 1


class MotsWriter(_TextWriter):
    """``frame id class_id height width rle`` with id = class_id*1000 + instance (module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._instances: dict[tuple[int, int], int] = {}  # (class, track id) → instance number
        self._per_class: dict[int, int] = {}

    def _object_id(self, class_id: int, track_id: int) -> int:
        key = (class_id, track_id)
        if key not in self._instances:
            n = self._per_class.get(class_id, 0) + 1
            if n > 999:
                raise ConfigError(f"more than 999 tracks of class {class_id}: the MOTS layout "
                                  f"(id = class_id*1000 + instance) cannot number them")
            self._per_class[class_id], self._instances[key] = n, n
        return class_id * 1000 + self._instances[key]

    def write(self, frame: FrameDets, tracks: TrackedObjects, rles: Sequence[dict[str, Any] | None]) -> None:
        for k, rle in zip(np.argsort(-tracks.scores, kind="stable"), _disjoint(rles, tracks.scores)):
            if rle is None or not mask_utils.area(to_coco(rle)):
                continue  # nothing left to score once overlaps went to stronger tracks
            class_id = int(tracks.class_ids[k])
            h, w = rle["size"]
            self._f.write(f"{frame.frame} {self._object_id(class_id, int(tracks.track_ids[k]))} {class_id} "
                          f"{h} {w} {rle['counts']}\n")
            self.rows += 1


class JsonlWriter:
    """The input's lines with each instance's ``track_id`` (null when no track claimed it) and,
    when the tracker smoothed them, its masks; everything else passes through."""

    def __init__(self, path: Path) -> None:
        self.rows = 0
        self._sink = JsonlSink(path)  # its SinkError already says what went wrong
        self._names: dict[int, str] = {}

    def write(self, frame: FrameDets, tracks: TrackedObjects, rles: Sequence[dict[str, Any] | None]) -> None:
        record = dict(frame.record or {})
        name = instance_layer(record)
        if name is not None:
            found = record["layers"][name]["items"]
            self._names.update((int(i["class_id"]), i.get("class")) for i in found)
            out = [{**i, "track_id": None} for i in found]
            for row, d in enumerate(tracks.detection):
                class_id = int(tracks.class_ids[row])
                out[d] = {"track_id": int(tracks.track_ids[row]),
                          "class": self._names.get(class_id, str(class_id)), "class_id": class_id,
                          "score": round(float(tracks.scores[row]), 4),
                          "box": [round(float(v), 2) for v in tracks.boxes[row]],
                          "mask": rles[row] if rles[row] is not None else found[d].get("mask")}
                self.rows += 1
            record["layers"] = {**record["layers"], name: {**record["layers"][name], "items": out}}
        self._sink.write_record(record)

    def close(self) -> None:
        self._sink.close()


def _disjoint(rles: Sequence[dict[str, Any] | None], scores: np.ndarray) -> list[dict[str, Any] | None]:
    """The masks in descending score order, each pixel kept only by the first mask claiming it."""
    ranked = [rles[k] for k in np.argsort(-scores, kind="stable")]
    present = [k for k, r in enumerate(ranked) if r is not None]
    if len(present) < 2:
        return ranked
    coco = [to_coco(ranked[k]) for k in present]
    overlap = mask_utils.iou(coco, coco, [True] * len(coco)) > 0  # on the RLEs: no decoding
    np.fill_diagonal(overlap, False)
    taken = None
    for j in np.flatnonzero(overlap.any(1)):  # only masks that overlap another one change
        m = mask_utils.decode(coco[j]).view(bool)  # column-major 0/1, re-encoded without a copy
        taken = np.zeros_like(m) if taken is None else taken
        m &= ~taken
        taken |= m
        ranked[present[j]] = encode_mask(m)
    return ranked


def _num(v: float) -> str:
    """Up to 3 decimals without trailing zeros: MOT files' own precision, and short."""
    text = f"{float(v):.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
