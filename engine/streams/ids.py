"""Stream ids: short, safe names derived from a source, for output paths (``{stream}``), JSON lines and tables.

An id is made of letters, digits, ``.``, ``_`` and ``-`` only (at most 48), so it is safe in a file
name, a URL path and a metric label. It never carries a secret: from a URL only the host, the port
and the path's last parts are used (no user, password, query or fragment).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath

from segengine.errors import ConfigError

MAX_LENGTH = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


def check_id(stream_id: str) -> str:
    """``stream_id`` itself, or a ConfigError saying what an id may hold."""
    if not isinstance(stream_id, str) or not _VALID.fullmatch(stream_id) or stream_id in (".", ".."):
        raise ConfigError(f"stream id {stream_id!r}: use 1 to {MAX_LENGTH} letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return stream_id


def _safe(text: str) -> str:
    text = _UNSAFE.sub("-", text).strip("-.")
    return text[-MAX_LENGTH:].strip("-.") if len(text) > MAX_LENGTH else text


def derive_id(source: str) -> str:
    """A readable id for ``source``: a file's stem, a camera's device name, a URL's host, port and path."""
    text = str(source).strip()
    match = _SCHEME.match(text)
    if match is None:
        if " ! " in text:  # a bare GStreamer pipeline: its first element
            return _safe(text.split("!", 1)[0].split()[0]) or "gstreamer"
        path = PurePath(text)
        while path.name and any(c in path.name for c in "*?["):  # a glob: the folder it walks
            path = path.parent
        return _safe(path.stem) or "stream"
    scheme, rest = match.group(1).lower(), match.group(2)
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]  # queries carry tokens: never part of an id
    if scheme in ("file", "v4l2", "csi", "synthetic", "gst"):
        base = PurePath(rest.split("!", 1)[0].strip()).stem if scheme != "synthetic" else ""
        return _safe(f"{scheme}-{base}" if scheme in ("csi", "synthetic") and base else base or scheme)
    authority, _, path = rest.partition("/")
    host = authority.rpartition("@")[2]  # the userinfo is dropped whole
    parts = [host.replace(":", "-")] + [p for p in path.split("/") if p][-2:]
    return _safe("-".join(parts)) or scheme


def unique_ids(wanted: Iterable[str | None], sources: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """One id per source: the one given (checked, and refused when it repeats), or one derived from
    the source, numbered ``-2``, ``-3``... where two would be the same."""
    used = set(taken)
    ids = []
    for given, source in zip(wanted, sources):
        if given is not None:
            check_id(given)
            if given in used:
                raise ConfigError(f"two streams are named {given!r}: give each its own id")
            ids.append(given)
            used.add(given)
            continue
        base = derive_id(source)
        base = base if _VALID.fullmatch(base) else f"s-{base}"[:MAX_LENGTH]
        candidate, n = base, 2
        while candidate in used:
            suffix = f"-{n}"
            candidate, n = base[:MAX_LENGTH - len(suffix)] + suffix, n + 1
        ids.append(candidate)
        used.add(candidate)
    return ids


def expand(path: PurePath | str | None, stream_id: str) -> str | None:
    """An output path with ``{stream}`` replaced by the id; any other brace is an error."""
    if path is None:
        return None
    text = str(path)
    rest = text.replace("{stream}", "")
    if "{" in rest or "}" in rest:
        raise ConfigError(f"output path {text!r}: the only placeholder is {{stream}}")
    return text.replace("{stream}", check_id(stream_id))
