"""One segengine JSON line (schema 2, see :mod:`segengine.sinks.jsonl`) read for ``segengine track``.

Strict where ``json`` and Python are lenient: NaN/Infinity literals and numbers that overflow
to infinity (``1e400``) are refused, booleans are no numbers, nesting is bounded before the
parser's recursion is, and every size, count and coordinate is held to the bounds of
:mod:`segengine.tracking.limits`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from segengine.tracking.limits import (
    MAX_CLASS_ID,
    MAX_COORDINATE,
    MAX_DETECTIONS,
    MAX_FRAME,
    MAX_JSON_DEPTH,
    MAX_SECONDS,
)
from segengine.tracking.lines import Line, mask_size, rle_error

_EXPECTED = ("expected a segengine JSON line: frame, size [h, w] and an instances layer whose items have box "
             "[x1, y1, x2, y2], score, class_id and an optional mask RLE")


@dataclass(frozen=True)
class Record:
    record: dict[str, Any]
    frame: int
    pts: float | None
    size: tuple[int, int]
    items: list[dict[str, Any]]  # the instances layer's items, checked
    masks: list[dict[str, Any] | None]  # each item's RLE (None: no mask)


def parse_record(line: Line) -> Record:
    """The checked record, or ConfigError naming the line and what was wrong."""
    text = line.text
    try:
        record = _load(text)
        return _check(record)
    except ValueError as exc:
        raise line.error(f"{_EXPECTED} ({exc}), got {_clip(text)}") from None


def instance_layer(record: dict[str, Any]) -> str | None:
    """The name of a segengine JSON line's first instances layer (schema 2), or None."""
    layers = record.get("layers")
    if not isinstance(layers, dict):
        return None
    return next((name for name, layer in layers.items() if isinstance(layer, dict)
                 and layer.get("kind") == "instances"), None)


def _load(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # raised cleanly by the C scanner; the depth check below is the real bound
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    _check_depth(record)
    return record


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_depth(obj: Any) -> None:
    """Without recursion: a writer re-encoding the record later must not run out of stack."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def _check(record: dict[str, Any]) -> Record:
    if "layers" not in record and "instances" in record:
        raise ValueError("written by an older segengine (schema 1, top-level instances): run "
                         "`segengine run` again to write schema 2")
    frame = _whole(record.get("frame"), "frame", 0, MAX_FRAME)
    size = record.get("size")
    if not isinstance(size, list) or len(size) != 2:
        raise ValueError(f"size {_short(size)} is not [height, width]")
    h, w = (_whole(v, "size", 1, 1 << 62) for v in size)
    if (why := mask_size(h, w)) is not None:
        raise ValueError(why.replace("mask size", "frame size"))
    pts = record.get("pts")
    if pts is not None:
        pts = _real(pts, "pts", MAX_SECONDS)
    name = instance_layer(record)
    items: Any = [] if name is None else record["layers"][name].get("items")
    if not isinstance(items, list):
        raise ValueError(f"the instances layer's items are a {type(items).__name__}, not a list")
    if len(items) > MAX_DETECTIONS:
        raise ValueError(f"{len(items):,} instances, over the {MAX_DETECTIONS:,} a frame read")
    masks = [_item(i, k, (h, w)) for k, i in enumerate(items)]
    return Record(record, frame, pts, (h, w), items, masks)


def _item(item: Any, k: int, size: tuple[int, int]) -> dict[str, Any] | None:
    """Checks instance ``k``; its mask RLE or None."""
    if not isinstance(item, dict):
        raise ValueError(f"instance {k} is a {type(item).__name__}, not an object")
    box = item.get("box")
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError(f"instance {k}: box {_short(box)} is not [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (_real(v, f"instance {k}: box", MAX_COORDINATE) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"instance {k}: box {box} ends before it starts")
    _real(item.get("score"), f"instance {k}: score")
    _whole(item.get("class_id"), f"instance {k}: class_id", 0, MAX_CLASS_ID)
    mask = item.get("mask")
    if mask is None:
        return None
    if not isinstance(mask, dict) or mask.get("size") != list(size):
        raise ValueError(f"instance {k}: a mask is not an RLE of the frame's size {list(size)}")
    if (why := rle_error(mask.get("counts"), size[0] * size[1])) is not None:
        raise ValueError(f"instance {k}: mask {why}")
    return mask


def _whole(value: Any, what: str, low: int, high: int) -> int:
    """An int (or a whole float: 12.0) low … high; bools are refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} {_short(value)} is not a whole number {low:,} … {high:,}")
    return value


def _real(value: Any, what: str, bound: float | None = None) -> float:
    """A finite number (within ±bound); bools and strings are refused. Big ints are compared
    exactly, before float() could overflow on them."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not abs(value) <= (sys.float_info.max if bound is None else bound):
        limit = "" if bound is None else f" within ±{bound:,.0f}"
        raise ValueError(f"{what} {_short(value)} is not a finite number{limit}")
    return float(value)


def _short(value: Any) -> str:
    return _clip(json.dumps(value)) if isinstance(value, (list, dict, str)) else repr(value)


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
