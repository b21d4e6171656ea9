"""The lines of a detections file, read with the bounds of :mod:`segengine.tracking.limits`.

A file still being written, or cut by a crash, ends in a line with no newline that does not
parse: ``parsed`` stops there and notes it in a ``Damage`` (the lines before it are used), where
the same line in the middle of a file is an error. Numbers are matched by strict ASCII
patterns before ``int``/``float`` see them, since those also take "١٢", "1_000" or " 5 ".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from segengine.errors import ConfigError
from segengine.tracking.limits import MAX_COORDINATE, MAX_FRAME, MAX_LINE_BYTES, MAX_MASK_PIXELS, MAX_MASK_SIDE

T = TypeVar("T")
OnBytes = Callable[[int], None]

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")  # 18 digits: always an int64
RLE_COUNTS = re.compile(r"[0-o]+")  # pycocotools' compressed counts: characters 48 ('0') to 111 ('o')


@dataclass(frozen=True)
class Line:
    path: Path
    number: int  # 1-based
    raw: bytes
    cut: bool  # the last line, with no newline: maybe cut off while being written

    @property
    def text(self) -> str:
        """The line as text without its surrounding white space; ConfigError for binary."""
        nul = self.raw.find(0)
        if nul >= 0:
            raise self.error(f"a NUL byte at column {nul + 1}: the file is binary, or was cut "
                             f"by a crash (which can leave zeros where lines were not yet written)")
        try:
            return self.raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise self.error(f"expected text, got bytes that are not UTF-8 at column {exc.start + 1}") from None

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path} line {self.number}: {message}")


class Damage:
    """What a reader left out at the end of a file: a cut-off last line (None while none)."""

    def __init__(self) -> None:
        self.line: int | None = None
        self.reason = ""

    def __bool__(self) -> bool:
        return self.line is not None


def read_lines(path: Path, on_bytes: OnBytes | None = None) -> Iterator[Line]:
    """Each line that is not blank; its bytes also go to ``on_bytes`` (progress)."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if on_bytes is not None:
                on_bytes(len(raw))
            if len(raw) > MAX_LINE_BYTES:  # refused before the rest of it is read
                raise ConfigError(f"{path} line {number}: longer than {MAX_LINE_BYTES >> 20} MiB, the longest line "
                                  f"read: this is no detections file, or its frame has far too many masks")
            if raw.strip():
                yield Line(path, number, raw, cut=not raw.endswith(b"\n"))


def parsed(lines: Iterable[Line], parse: Callable[[Line], T | None], damage: Damage | None) -> Iterator[tuple[Line, T]]:
    """(line, ``parse(line)``) where that is not None. A cut-off last line that ``parse`` refuses
    ends the file there when ``damage`` is given (and is noted in it); otherwise it is an error."""
    for line in lines:
        try:
            item = parse(line)
        except ConfigError as exc:
            if not line.cut or damage is None:
                raise
            damage.line, damage.reason = line.number, str(exc).removeprefix(f"{line.path} line {line.number}: ")
            return
        if item is not None:
            yield line, item


# --- strict numbers ---------------------------------------------------------------------------

def is_number(text: str) -> bool:
    """A plain finite decimal number (what ``number`` takes)."""
    return _NUMBER.fullmatch(text) is not None and math.isfinite(float(text))


def number(text: str, what: str) -> float:
    """A finite decimal number, ASCII only; ValueError saying what was wrong."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{what} {clip(text)} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{what} {clip(text)} is out of range")
    return value


def coordinate(text: str, what: str) -> float:
    value = number(text, what)
    if abs(value) > MAX_COORDINATE:
        raise ValueError(f"{what} {clip(text)} is beyond ±{MAX_COORDINATE:,.0f} px")
    return value


def integer(text: str, what: str, low: int, high: int) -> int:
    """A whole number low … high, digits only."""
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"{what} {clip(text)} is not a whole number {low:,} … {high:,}")
    return int(text)


def frame_number(text: str) -> int:
    """A frame number 0 … MAX_FRAME: ``12`` or ``12.0``."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"frame {clip(text)} is not a number")
    value = float(text)
    if not (math.isfinite(value) and value.is_integer() and 0 <= value <= MAX_FRAME):
        raise ValueError(f"frame {clip(text)} is not a whole number 0 … {MAX_FRAME:,}")
    return int(value)


def mask_size(h: int, w: int) -> str | None:
    """Why a mask of h × w is refused, or None."""
    if not (1 <= h <= MAX_MASK_SIDE and 1 <= w <= MAX_MASK_SIDE):
        return f"mask size {h}×{w}: each side must be 1 … {MAX_MASK_SIDE:,} px"
    if h * w > MAX_MASK_PIXELS:
        return f"mask size {h}×{w} is over {MAX_MASK_PIXELS:,} pixels"
    return None


def rle_error(counts: object, pixels: int) -> str | None:
    """Why ``counts`` is no compressed COCO RLE of exactly ``pixels`` pixels, or None.

    Checked here, not left to pycocotools: it reads a run of any length into a C long shift,
    where the runs fall short of the mask it leaves the rest of the mask uninitialised, and an
    empty run after the first makes its bounding box wrap round.
    The format (pycocotools' rleFrString): each run is 5-bit groups, low first, 0x20 set while
    more follow, 0x10 of the last one its sign; from the fourth run on, each is a delta on the
    run two before it."""
    if not isinstance(counts, str) or not RLE_COUNTS.fullmatch(counts):
        return "counts are not a compressed RLE string (characters '0' to 'o')"
    v = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    more = (v & 0x20) != 0
    if more[-1]:
        return "the last run is cut off"
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    sizes = ends - starts + 1
    if sizes.max() > 7:  # 35 bits: far beyond any mask's pixels
        return "a run is too long"
    shift = 5 * (np.arange(len(v)) - np.repeat(starts, sizes))
    runs = np.add.reduceat((v & 0x1F) << shift, starts)
    runs -= np.where(v[ends] & 0x10, np.int64(1) << (5 * sizes), 0)
    runs[3::2] = np.cumsum(runs[1::2])[1:]
    runs[4::2] = np.cumsum(runs[2::2])[1:]
    if runs.min() < 0 or runs.max() > pixels or runs.sum() != pixels:
        return f"the runs do not add up to the mask's {pixels:,} pixels"
    if not runs[1:].all():  # pycocotools' toBbox wraps round on them: a box 4e9 px wide (found by fuzzing)
        return "a run of length 0 after the first (no encoder writes one)"
    return None


def clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")

