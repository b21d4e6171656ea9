"""Fuzz targets for ``segengine track``'s readers (benchmarks/fuzz.py runs them).

Each target writes the fuzzer's bytes to a file and reads it whole; the readers document
ConfigError (a bad line, named) and nothing else, so anything else escaping is a crash. ``track``
runs the whole of ``segengine track`` on the bytes (format told by the content, tracker and
writer included), where a cut-off last line is no error but ``summary.damaged``.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from segengine.errors import ConfigError
from segengine.tracking.formats import Damage, detect_format, read_frames
from segengine.tracking.offline import track_file

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-tracking-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _file(data: bytes, name: str = "dets.dat") -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def _reader(fmt: str) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        path = _file(data)
        try:
            for _ in read_frames(path, fmt, 25.0, damage=Damage()):
                pass
        except ConfigError:
            pass

    return target


def _detect(data: bytes) -> None:
    try:
        detect_format(_file(data))
    except ConfigError:
        pass


def _track(data: bytes) -> None:
    src = _file(data)
    try:
        track_file(src, _DIR / "tracks.dat", progress=False)
    except ConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {"mot": _reader("mot"), "mots": _reader("mots"),
                                               "jsonl": _reader("jsonl"), "detect_format": _detect,
                                               "track": _track}

_MOT = (b"1,-1,10,20,30,40,0.9,-1,-1,-1\n1,-1,50,20,10,10,0.6,-1,-1,-1\n2,-1,11,20,30,40,0.8,-1,-1,-1\n"
        b"4,-1,12,20,30,40,0.7\n")
# 48×64 masks: a 10×10 square, the empty mask, two boxes, the left 5 columns
_MOTS = (b"1 -1 1 0.9 48 64 Z3:V100000000000000000f]2\n1 -1 2 0.5 48 64 PP3\n"
         b"2 2001 2 48 64 U]1i0g000000000000000000S`0\\Oa@00000000000000000h4\n3 10000 10 48 64 0`7`h2\n")
_RECORD = {"schema": 2, "frame": 0, "pts": 0.0, "stream": "0", "size": [48, 64],
           "layers": {"instances": {"kind": "instances", "items": [
               {"track_id": None, "class": "car", "class_id": 2, "score": 0.9, "box": [2, 10, 12, 20],
                "mask": {"size": [48, 64], "counts": "Z3:V100000000000000000f]2"}},
               {"track_id": None, "class": "person", "class_id": 0, "score": 0.4, "box": [30, 5, 40, 30]}]}}}
_JSONL = b"".join(json.dumps({**_RECORD, "frame": k, "pts": k / 25}).encode() + b"\n" for k in range(3))
SEEDS: dict[str, list[bytes]] = {
    "mot": [_MOT, b"1 -1 10 20 30 40 0.9\n"],
    "mots": [_MOTS],
    "jsonl": [_JSONL, _JSONL[:-20]],
    "detect_format": [_MOT, _MOTS, _JSONL],
    "track": [_MOT, _MOTS, _JSONL],
}
