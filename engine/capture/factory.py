"""One function from a URI to a Source, chosen by the URI's form.

Schemes live in a read-only table; a later source (rtsp, v4l2, csi) adds one entry. Paths are
checked here so a typo is reported before any thread starts, but nothing is opened here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

from engine.capture.base import Source
from engine.capture.images import ImageFolderSource, is_glob, list_images
from engine.capture.pyav import PyAVFileSource, check_readable_file
from engine.capture.synthetic import SyntheticSource
from engine.errors import ConfigError, EndOfStream, SourceError
from engine.types import Frame, SourceInfo

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
FORMS = ("path/to/video.mp4 or file:///abs/path.mp4 (any file FFmpeg reads)",
         "path/to/folder or 'frames/*.png' (images in natural order)",
         "synthetic://?width=640&height=360&fps=25&frames=100&seed=0&live=0 (test scene)")


def _open_path(text: str) -> Source:
    """An existing folder or a glob → images; anything else must be an existing file → PyAV."""
    if os.path.isdir(text) or (is_glob(text) and not os.path.exists(text)):
        list_images(text)  # raises now, with the reason, when there is nothing to read
        return ImageFolderSource(text)
    if not os.path.exists(text):
        raise SourceError(f"source not found: {text} is no existing file or folder (check the path; "
                          f"relative paths start at {Path.cwd()}); supported forms: " + "; ".join(FORMS))
    check_readable_file(Path(text))  # e.g. a 0-byte file, said plainly before FFmpeg's 'Invalid data'
    return PyAVFileSource(text)


def _file(uri: str) -> Source:
    path = unquote(urlsplit(uri).path if uri.startswith("file:///") else uri[len("file://"):])
    return _open_path(path)


def _param(params: Mapping[str, str], key: str, default: str, parse: Callable[[str], object]) -> object:
    value = params.get(key, default).strip().lower()
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"synthetic:// parameter {key}={params[key]!r} is not {parse.__doc__}") from None


def _integer(text: str) -> int:
    """an integer"""
    return int(text)


def _number(text: str) -> int | float:
    """a number"""
    value = float(text)
    return int(value) if value.is_integer() else value


def _count(text: str) -> int | None:
    """an integer or 'none' (endless)"""
    return None if text in ("none", "inf", "endless", "") else int(text)


def _flag(text: str) -> bool:
    """0/1/true/false"""
    if text not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(text)
    return text in ("1", "true", "yes")


def _synthetic(uri: str) -> Source:
    params = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
    spec = {"width": ("640", _integer), "height": ("360", _integer), "fps": ("25", _number),
            "frames": ("100", _count), "seed": ("0", _integer), "objects": ("3", _integer),
            "live": ("0", _flag)}
    if unknown := sorted(set(params) - set(spec)):
        raise ConfigError(f"synthetic:// does not know {', '.join(unknown)}; use {', '.join(spec)}")
    kwargs = {key: _param(params, key, default, parse) for key, (default, parse) in spec.items()}
    return SyntheticSource(**kwargs)  # type: ignore[arg-type]  # each parser returns its field's type


# scheme → constructor. Read-only: a new scheme is a new line here, not a runtime mutation.
SCHEMES: Mapping[str, Callable[[str], Source]] = MappingProxyType({
    "file": _file,
    "synthetic": _synthetic,
})


def open_source(uri: str, *, loop: bool = False) -> Source:
    """Build (not open) the source for ``uri``. ``loop`` replays a finite source forever."""
    text = os.fspath(uri)
    build = _builder(text)
    source = build()
    if not loop:
        return source
    if source.info.live:
        raise ConfigError(f"loop=True needs a finite, non-live source; {source.info.name} is live")
    return LoopingSource(build, first=source)


def _builder(text: str) -> Callable[[], Source]:
    if not text.strip():
        raise ConfigError("empty source; use one of: " + "; ".join(FORMS))
    match = _SCHEME.match(text)
    if not match:
        return lambda: _open_path(text)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"unsupported source scheme {scheme}:// in {text!r}; supported forms: "
                          + "; ".join(FORMS))
    make = SCHEMES[scheme]
    return lambda: make(text)


class LoopingSource:
    """Replays a source from the start at each end; index and pts keep increasing across laps."""

    def __init__(self, make: Callable[[], Source], first: Source) -> None:
        self._make, self._source = make, first
        self._index, self._last_pts = 0, 0.0
        self._offset: float | None = 0.0  # None: first frame of a new lap decides it
        self._closed = False

    @property
    def info(self) -> SourceInfo:
        inner = self._source.info
        return SourceInfo(name=f"{inner.name} (looped)", live=False, size=inner.size, fps=inner.fps,
                          frame_count=None, time_base=inner.time_base)

    def open(self) -> None:
        self._source.open()

    def read(self, timeout: float) -> Frame:
        try:
            frame = self._source.read(timeout)
        except EndOfStream:
            if self._closed or self._index == 0:
                raise  # closed, or a source without frames would loop forever
            self._restart()
            frame = self._source.read(timeout)  # EndOfStream again: it became empty; let it out
        if self._offset is None:  # the next lap starts one frame period after the last frame
            fps = self._source.info.fps
            self._offset = self._last_pts + (float(1 / fps) if fps else 0.04) - frame.pts
        self._last_pts = self._offset + frame.pts
        self._index += 1
        return Frame(image=frame.image, index=self._index - 1, pts=self._last_pts, stream=frame.stream,
                     memory=frame.memory, captured_at=frame.captured_at)

    def _restart(self) -> None:
        self._source.close()
        self._source, self._offset = self._make(), None
        self._source.open()
        if self._closed:  # close() ran during the restart: do not leak the new lap
            self._source.close()

    def close(self) -> None:
        self._closed = True
        self._source.close()
