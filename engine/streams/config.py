"""A run of many streams as the user asked for it: the command line's sources and a TOML file, merged.

``segengine run --config streams.toml``::

    [engine]                      # what runs, for every stream
    preset = "road"               # or model = "mine.onnx" (with classes = "names.txt")
    backend = "auto"
    max_batch = 4

    [defaults]                    # every stream's settings unless it sets its own
    output = "out/{stream}.mp4"
    json = "out/{stream}.jsonl"

    [[streams]]
    source = "rtsp://user:pass@cam1/main"
    id = "gate"                   # default: a safe name derived from the source (never a password)
    policy = "latest"             # auto (default): latest for live sources, lossless for files
    interval = "auto"

Precedence, lowest first: built-in defaults, the file's ``[defaults]`` and ``[engine]``, flags given
on the command line, a stream's own table. Sources named on the command line join the file's
streams. Unknown keys and wrong types are errors naming the file, the table and the key.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segengine.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MAX_STREAMS = 256
MAX_FILE = 1 << 20  # bytes: a stream list, not a data file

# key → (type(s) accepted, the argparse attribute it overrides or None)
STREAM_KEYS: dict[str, tuple[tuple[type, ...], str | None]] = {
    "source": ((str,), None), "id": ((str,), None),
    "output": ((str,), "output"), "json": ((str,), "json"), "images_out": ((str,), "images_out"),
    "json_masks": ((str,), "json_masks"), "interval": ((int, str), "interval"), "policy": ((str,), None),
    "max_frames": ((int,), "max_frames"), "loop": ((bool,), "loop"),
    "open_timeout": ((int, float), "open_timeout"), "read_timeout": ((int, float), "read_timeout"),
    "stall": ((int, float), "stall"), "frozen_check": ((bool,), None), "reconnect": ((int,), "reconnect"),
    "rtsp_transport": ((str,), "rtsp_transport"), "camera_backend": ((str,), "camera_backend"),
}
ENGINE_KEYS: dict[str, tuple[type, ...]] = {
    "preset": (str,), "model": (str,), "classes": (str,), "backend": (str,), "precision": (str,),
    "max_batch": (int,), "batch_timeout": (int, float), "model_dir": (str,),
}


@dataclass(frozen=True)
class StreamRequest:
    """One stream's settings, merged: ``settings`` holds every key of STREAM_KEYS but source and id."""

    source: str
    id: str | None
    settings: Mapping[str, Any]


def load_file(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            raise ConfigError(f"{path}: {size:,} bytes; a stream list is at most {MAX_FILE:,}")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - {"engine", "defaults", "streams"})
    if unknown:
        raise ConfigError(f"{path}: unknown table {', '.join(unknown)} (tables: engine, defaults, [[streams]])")
    return data


def _checked(table: Any, where: str, keys: Mapping[str, tuple[type, ...]]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {key!r} (keys: {', '.join(keys)})")
        types = keys[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: {key} must be a {names}, got {value!r}")
    return dict(table)


def engine_settings(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    return _checked(data.get("engine", {}), f"{origin} [engine]", ENGINE_KEYS)


def requests(args: argparse.Namespace, parser_defaults: Mapping[str, Any],
             data: Mapping[str, Any] | None = None, origin: str = "") -> list[StreamRequest]:
    """Every stream to run: the file's ``[[streams]]``, then the command line's sources."""
    stream_keys = {k: t for k, (t, _) in STREAM_KEYS.items()}
    data = data or {}
    file_defaults = _checked(data.get("defaults", {}), f"{origin} [defaults]", stream_keys)
    for key in ("source", "id"):
        if key in file_defaults:
            raise ConfigError(f"{origin} [defaults]: {key} belongs to each [[streams]] table")
    tables = data.get("streams", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}: streams must be an array of tables ([[streams]])")
    base = {key: getattr(args, attr) for key, (_, attr) in STREAM_KEYS.items() if attr is not None}
    base["policy"], base["frozen_check"] = "auto", not args.no_frozen_check
    given = {key for key, (_, attr) in STREAM_KEYS.items()
             if attr is not None and getattr(args, attr) != parser_defaults.get(attr)}
    if args.no_frozen_check:
        given.add("frozen_check")
    merged_defaults = {**base, **{k: v for k, v in file_defaults.items() if k not in given}}
    out = []
    for i, table in enumerate(tables):
        where = f"{origin} [[streams]] #{i + 1}"
        own = _checked(table, where, stream_keys)
        if "source" not in own:
            raise ConfigError(f"{where}: needs a source")
        out.append(StreamRequest(own.pop("source"), own.pop("id", None), {**merged_defaults, **own}))
    out.extend(StreamRequest(source, None, dict(merged_defaults)) for source in args.source)
    if not out:
        raise ConfigError("no source: name one or more on the command line, or [[streams]] in --config FILE")
    if len(out) > MAX_STREAMS:
        raise ConfigError(f"{len(out)} streams; one run takes at most {MAX_STREAMS}")
    return out
