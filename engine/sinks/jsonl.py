"""Results as JSON lines: one object per frame, flushed as it is written.

Schema 2 (every key is always present; ``source`` is ``null`` when unknown)::

    {"schema": 2,
     "frame": 12,                      # Frame.index, 0-based in its stream
     "pts": 0.48,                      # seconds, from the container
     "stream": "0",
     "size": [540, 960],               # frame [height, width]: what boxes, masks and lanes refer to
     "inferred": true,                 # false: the networks skipped this frame (--interval N) and its
                                       # layers were carried from the last inferred one (tracks moved
                                       # by their predicted motion, maps and lanes held); no "infer" timing
     "layers": {                       # one entry per graph output, by name; each says its kind
        "instances": {"kind": "instances", "items": [
            {"track_id": 3,            # null while untracked
             "class": "car", "class_id": 2, "score": 0.9137,
             "box": [x1, y1, x2, y2],  # frame pixels, 2 decimals
             "mask": {"size": [h, w], "counts": "..."}}]},  # COCO RLE at frame resolution
        "drivable": {"kind": "binary_map",                    # maps: class ids at model resolution,
                     "classes": ["background", "drivable"],   # COCO RLE per class present but "background",
                     "placement": {"frame_size": [540, 960], "input_size": [360, 640],
                                   "resized": [360, 640], "top": 0, "left": 0},
                     "masks": {"drivable": {"size": [360, 640], "counts": "..."}}},
        "lanes": {"kind": "lane_lines", ...the map's keys...,
                  "polylines": [[[x, y], ...], ...]},         # frame pixels, top to bottom
        "semantic": {"kind": "semantic", ...the map's keys...}},
     "timings_ms": {"infer": 12.345},  # per stage
     "source": {"state": "streaming",  # the source's health when the frame was finished:
                "frames": 12, "dropped": 0, "skipped": 0,  # read; dropped for latency; corrupt, left out
                "reconnects": 0, "gaps": 0, "partial": null}}  # live reconnections; time jumps; early end

Masks are what costs (2.4 ms a frame for the road preset's three layers, most of it the two
maps): ``masks`` says which are written. ``"all"``; ``"instances"`` (the CLI's default: instance
masks, and the maps' classes and placement with ``"masks": null``); ``"none"`` (instances' ``"mask"``
null too: boxes, classes, scores, track ids and lane polylines only).

A map's placement takes it back to the frame: the map covers the network input; the frame is
its region ``rows round(top·h/ih) .. round((top + resized_h)·h/ih)`` (columns likewise, with
``left`` and widths), resized to ``frame_size`` (nearest). ``segengine.layers.map_from_json(layer)``
does it; ``segengine.rle.decode_mask(item["mask"])`` gives an instance's bool H×W mask (pycocotools'
own RLE, so any COCO tool reads them too); ``read_jsonl(path)`` iterates the objects.

Each line goes to the OS in one write, right away, so a run that is killed leaves every
finished frame on disk: in ``<name>.<random>.partial.jsonl`` beside the target, which ``close``
renames onto it, so a run that fails never replaces an existing file (``abort`` keeps the lines).
If a write fails part-way (disk full), the file is cut back to the last whole line, so readers
never see half an object.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from segengine.errors import SinkError
from segengine.layers import Instances
from segengine.sinks.staging import StagedFile
from segengine.types import FrameResult

SCHEMA = 2
MaskChoice = Literal["all", "instances", "none"]
MASK_CHOICES: tuple[MaskChoice, ...] = ("all", "instances", "none")


def _check_masks(masks: str) -> MaskChoice:
    if masks not in MASK_CHOICES:
        raise SinkError(f"JSON masks {masks!r}: choose one of {', '.join(MASK_CHOICES)}")
    return masks  # type: ignore[return-value]


def to_record(result: FrameResult, masks: MaskChoice = "all") -> dict[str, Any]:
    """The JSON-ready object for one frame (see the module docstring)."""
    _check_masks(masks)
    frame = result.frame
    return {"schema": SCHEMA,
            "frame": frame.index,
            "pts": round(frame.pts, 6),
            "stream": frame.stream,
            "size": list(frame.size),
            "inferred": result.inferred,
            "layers": {name: layer.to_json(masks=masks == "all" or (masks == "instances" and isinstance(
                layer, Instances))) for name, layer in result.layers.items()},
            "timings_ms": {stage: round(s * 1000.0, 3) for stage, s in result.timings.items()},
            "source": dataclasses.asdict(result.source) if result.source is not None else None}


class JsonlSink:
    """One JSON object per line to a file, ``"-"`` (stdout) or an open text stream; ``masks``: which
    layers' masks are written (see the module docstring)."""

    def __init__(self, target: str | os.PathLike[str] | IO[str], *, masks: MaskChoice = "all") -> None:
        self.masks = _check_masks(masks)
        self._stream: IO[str] | None = None
        self._file: Any = None  # unbuffered binary file when we own a path
        self._good = 0  # bytes known to end on a whole line
        self._closed = False
        self._staged: StagedFile | None = None  # a path's lines go here first, renamed onto it on close
        self.name: str
        if isinstance(target, (str, os.PathLike)) and str(target) == "-":
            self._stream, self.name = sys.stdout, "<stdout>"
        elif isinstance(target, (str, os.PathLike)):
            self.name = str(target)
            self._staged = StagedFile(target, "JSON lines")
            # Unbuffered: each line is a single write() straight to the OS, nothing waits in Python.
            self._file = open(self._staged.path, "wb", buffering=0)
        else:
            self._stream, self.name = target, getattr(target, "name", "<stream>")

    @property
    def writing_to(self) -> Path | None:
        """The file the lines go to until ``close`` renames it (None for a stream)."""
        return self._staged.path if self._staged is not None else None

    def write(self, result: FrameResult) -> None:
        self.write_record(to_record(result, self.masks))

    def write_record(self, record: dict[str, Any]) -> None:
        """One object of the schema above as a whole line (also for re-tracked saved results)."""
        if self._closed:
            raise SinkError(f"JSON lines {self.name} is already closed")
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            if self._file is not None:
                self._write_whole(line.encode("utf-8"))
            else:
                assert self._stream is not None
                self._stream.write(line)
                self._stream.flush()
        except OSError as exc:
            full = exc.errno == errno.ENOSPC
            raise SinkError(f"cannot write JSON lines to {self.name} at frame {record.get('frame')}: "
                            + ("the disk is full" if full else str(exc))) from exc

    def _write_whole(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self._file.write(view):]
        except OSError:
            try:  # take back the partial line so the file still ends on a whole object
                os.ftruncate(self._file.fileno(), self._good)
                self._file.seek(self._good)
            except OSError:
                pass
            raise
        self._good += len(data)

    def close(self) -> None:
        """Flushes; a file is renamed onto its target (replacing what was there)."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            assert self._staged is not None
            self._staged.commit()
        elif self._stream is not None:
            self._stream.flush()  # stdout or a caller's stream: theirs to close

    def abort(self) -> Path | None:
        """The run failed: the target is left as it was; the whole lines written so far are kept
        beside it (returned), or removed when there are none."""
        if self._closed or self._file is None:
            self.close()
            return None
        self._closed = True
        self._file.close()
        assert self._staged is not None
        if self._good == 0:
            self._staged.discard()
            return None
        return self._staged.path

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The objects of a JSON lines file, in order (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
