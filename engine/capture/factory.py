"""One function from a URI to a Source, chosen by the URI's form.

Schemes live in a read-only table; paths are checked here so a typo is reported before any
thread starts, but nothing is opened here (a camera or a stream connects in ``open()``).
Live sources (cameras, GStreamer pipelines, network feeds) come wrapped in a
ReconnectingSource, so a dropped feed is reconnected instead of ending the run.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

import cv2

from segengine.capture.base import Source, SourceOptions, SourceStatus
from segengine.capture.files import check_readable_file
from segengine.capture.images import ImageFolderSource, is_glob, list_images
from segengine.capture.network import SCHEMES as NETWORK_SCHEMES
from segengine.capture.network import network_source
from segengine.capture.opencv import GSTREAMER_FIX, OpenCVSource, csi_pipeline, opencv_has_gstreamer
from segengine.capture.pyav import PyAVFileSource, PyAVSource
from segengine.capture.reconnect import ReconnectingSource
from segengine.capture.redact import Redactor
from segengine.capture.synthetic import SyntheticSource
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# ASCII only: str.isdigit() and int() also take "²" or "٣", which no camera index or size is.
_DIGITS = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?|[0-9]+/[0-9]+|nan|inf")
_DEVICE = re.compile(r"/dev/video[0-9]+")
MAX_CAMERA = 65535  # a camera index is a /dev/videoN minor number; OpenCV takes a C int
CSI_BOUNDS = {"sensor": (0, 63), "width": (16, 8192), "height": (16, 8192), "fps": (1, 1000)}
FORMS = ("path/to/video.mp4 or file:///abs/path.mp4 (any file FFmpeg reads)",
         "path/to/folder or 'frames/*.png' (images in natural order)",
         "rtsp://host[:port]/path (user:pass@ before the host if it asks), rtmp://, http(s)://... (.mp4, MJPEG, "
         ".m3u8 HLS), srt://, udp:// (network streams)",
         "0 or /dev/video0 (a webcam, V4L2)",
         "csi://0?width=1280&height=720&fps=30 (Jetson CSI camera) or gst://PIPELINE ! appsink (GStreamer)",
         "synthetic://?width=640&height=360&fps=25&frames=100&seed=0&live=0 (test scene)")


def _shown(text: str, limit: int = 200) -> str:
    """``text`` quoted for a message: redacted first, then cut (a cut URL could hide its password's end)."""
    shown = repr(Redactor.for_url(text)(text))
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _split(uri: str, *, port: bool = False) -> tuple[str, str, str]:
    """(netloc, path, query) of ``uri``; a malformed authority is the user's error, said as one."""
    try:
        parts = urlsplit(uri)
        if port:
            parts.port  # noqa: B018  # raises on a port that is no number in 0..65535
    except ValueError as exc:  # its text may quote the netloc, password and all: said in our words
        why = ("an unclosed or stray [ ] around an IPv6 host" if "IPv6" in str(exc) else
               "characters in the host that NFKC normalisation turns into / ? # @ or :" if "NFKC" in str(exc) else
               "the port is no number in 0..65535" if "Port" in str(exc) else "not a URI")
        raise ConfigError(f"malformed URI {_shown(uri)}: {why}; supported forms: " + "; ".join(FORMS)) from None
    return parts.netloc, parts.path, parts.query


def _network(uri: str, options: SourceOptions) -> Source:
    _split(uri, port=True)  # checked now: FFmpeg would only say so at open(), urlsplit with a bare ValueError
    return network_source(uri, options)


def _open_path(text: str, options: SourceOptions) -> Source:
    """An existing folder or a glob → images; anything else must be an existing file → PyAV."""
    if "\x00" in text:  # the OS cannot name it, and os/glob raise a bare ValueError on it
        raise ConfigError(f"the source path contains a NUL byte (at character {text.index(chr(0))}); "
                          "no file or folder is named so")
    try:
        if os.path.isdir(text) or (is_glob(text) and not os.path.exists(text)):
            list_images(text)  # raises now, with the reason, when there is nothing to read
            return ImageFolderSource(text)
        if not os.path.exists(text):
            raise SourceError(f"source not found: {text} is no existing file or folder (check the path; "
                              f"relative paths start at {Path.cwd()}); supported forms: " + "; ".join(FORMS))
        check_readable_file(Path(text))  # e.g. a 0-byte file, said plainly before FFmpeg's 'Invalid data'
    except SourceError:
        raise
    except OSError as exc:  # e.g. a folder we may not list
        raise SourceError(f"cannot read {text}: {exc.strerror or exc}") from exc
    return PyAVFileSource(text, max_pixels=options.max_pixels)


def _file(uri: str, options: SourceOptions) -> Source:
    path = unquote(_split(uri)[1] if uri.startswith("file:///") else uri[len("file://"):])
    return _open_path(path, options)


def _v4l2(uri: str, options: SourceOptions) -> Source:
    device = uri[len("v4l2://"):]
    if not (_DIGITS.fullmatch(device) or device.startswith("/")):
        raise ConfigError(f"v4l2:// takes a camera index or a device path (v4l2://0, v4l2:///dev/video0), "
                          f"got {_shown(uri)}")
    return _camera(device, options, name=Redactor.for_url(uri)(device))


def _camera(device: str, options: SourceOptions, *, name: str | None = None) -> Source:
    """A V4L2 webcam by index or path, through OpenCV (default) or PyAV's v4l2 demuxer."""
    index = int(device) if _DIGITS.fullmatch(device) else None
    if index is not None and index > MAX_CAMERA:
        raise ConfigError(f"camera index {device} is out of range (0..{MAX_CAMERA}); pass N of /dev/videoN")
    path = f"/dev/video{index}" if index is not None else device
    name = name or path
    if options.camera_backend == "pyav":
        def make() -> Source:
            return PyAVSource(path, name=name, live=True, fmt="v4l2", max_pixels=options.max_pixels,
                              timeout=(options.open_timeout, options.read_timeout))
    else:
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        target: int | str = path if index is None else index

        def make() -> Source:
            return OpenCVSource(target, api, name=name)
    return ReconnectingSource(make, options, name=name)


def _gstreamer(pipeline: str, uri: str, options: SourceOptions) -> Source:
    name = Redactor.for_url(uri)(uri)  # e.g. location=rtsp://user:pass@cam inside the pipeline
    if not opencv_has_gstreamer():  # said now, before any thread starts
        raise SourceError(f"cannot open {name}: {GSTREAMER_FIX}")
    return ReconnectingSource(lambda: OpenCVSource(pipeline, cv2.CAP_GSTREAMER, name=name), options, name=name)


def _gst(uri: str, options: SourceOptions) -> Source:
    pipeline = uri[len("gst://"):]
    if "appsink" not in pipeline:
        raise ConfigError(f"GStreamer pipeline must end in an appsink (e.g. '... ! videoconvert ! "
                          f"video/x-raw, format=BGR ! appsink drop=true max-buffers=1'): {_shown(pipeline)}")
    return _gstreamer(pipeline, uri, options)


def _csi(uri: str, options: SourceOptions) -> Source:
    netloc, _, query = _split(uri)
    params = dict(parse_qsl(query))
    spec = {"width": "1280", "height": "720", "fps": "30"}
    if unknown := sorted(set(params) - set(spec)):
        raise ConfigError(f"csi:// does not know {', '.join(unknown)}; use {', '.join(spec)}")
    given = {"sensor": netloc or "0", **{key: params.get(key, default).strip() for key, default in spec.items()}}
    values: dict[str, int] = {}
    for key, text in given.items():
        low, high = CSI_BOUNDS[key]
        if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
            shown = "" if key == "sensor" and not _DIGITS.fullmatch(text) else f" {text!r:.20}"  # a netloc
            raise ConfigError(f"{_shown(uri)}: {key}{shown} is not a whole number in {low}..{high} "
                              "(csi://SENSOR?width=W&height=H&fps=F)")
        values[key] = int(text)
    sensor = values.pop("sensor")
    return _gstreamer(csi_pipeline(sensor, **values), uri, options)


def _param(params: Mapping[str, str], key: str, default: str, parse: Callable[[str], object]) -> object:
    value = params.get(key, default).strip().lower()
    try:
        return parse(value)
    except ValueError:  # ours, or int()'s digit limit (4300) on a very long number
        raise ConfigError(f"synthetic:// parameter {key}={params[key]!r:.80} is not {parse.__doc__}") from None


def _integer(text: str) -> int:
    """an integer"""
    if not _INTEGER.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _number(text: str) -> int | float | Fraction:
    """a number (25, 29.97 or 30000/1001)"""
    if not _NUMBER.fullmatch(text):
        raise ValueError(text)
    if "/" in text:
        if int(text.partition("/")[2]) == 0:
            raise ValueError(text)
        return Fraction(text)
    value = float(text)
    return int(value) if value.is_integer() else value


def _count(text: str) -> int | None:
    """an integer or 'none' (endless)"""
    return None if text in ("none", "inf", "endless", "") else _integer(text)


def _flag(text: str) -> bool:
    """0/1/true/false"""
    if text not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(text)
    return text in ("1", "true", "yes")


def _synthetic(uri: str, _options: SourceOptions) -> Source:
    params = dict(parse_qsl(_split(uri)[2], keep_blank_values=True))
    spec = {"width": ("640", _integer), "height": ("360", _integer), "fps": ("25", _number),
            "frames": ("100", _count), "seed": ("0", _integer), "objects": ("3", _integer),
            "live": ("0", _flag)}
    if unknown := sorted(set(params) - set(spec)):
        raise ConfigError(f"synthetic:// does not know {', '.join(unknown)}; use {', '.join(spec)}")
    kwargs = {key: _param(params, key, default, parse) for key, (default, parse) in spec.items()}
    return SyntheticSource(**kwargs)  # type: ignore[arg-type]  # each parser returns its field's type


# scheme → constructor. Read-only: a new scheme is a new line here, not a runtime mutation.
SCHEMES: Mapping[str, Callable[[str, SourceOptions], Source]] = MappingProxyType({
    "file": _file,
    "synthetic": _synthetic,
    "csi": _csi,
    "gst": _gst,
    "v4l2": _v4l2,
    **{scheme: _network for scheme in NETWORK_SCHEMES},
})


def open_source(uri: str | os.PathLike[str], *, loop: bool = False, options: SourceOptions | None = None) -> Source:
    """Build (not open) the source for ``uri``. ``loop`` replays a finite source forever;
    ``options`` set timeouts, reconnection and limits (defaults: ``SourceOptions()``)."""
    text = os.fspath(uri)
    redactor = Redactor.for_url(text)
    try:
        build = _builder(text, options or SourceOptions())
        source = build()
    except (ConfigError, SourceError) as exc:
        message = redactor(str(exc))
        if message == str(exc):
            raise
        raise type(exc)(message) from None  # the original (and its traceback) quote the password
    if not loop:
        return source
    if source.info.live:
        raise ConfigError(f"loop=True needs a finite, non-live source; {source.info.name} is live")
    return LoopingSource(build, first=source)


def _builder(text: str, options: SourceOptions) -> Callable[[], Source]:
    if not text.strip():
        raise ConfigError("empty source; use one of: " + "; ".join(FORMS))
    if "\x00" in text:
        raise ConfigError(f"the source contains a NUL byte (at character {text.index(chr(0))}); "
                          "no file, device or URL has one")
    device = text.strip()
    if _DIGITS.fullmatch(device) or _DEVICE.fullmatch(device):
        return lambda: _camera(device, options)
    if " ! " in text and not _SCHEME.match(text):  # a bare GStreamer pipeline
        return lambda: _gst("gst://" + text, options)
    match = _SCHEME.match(text)
    if not match:
        return lambda: _open_path(text, options)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"unsupported source scheme {scheme}:// in {_shown(text)}; supported forms: "
                          + "; ".join(FORMS))
    make = SCHEMES[scheme]
    return lambda: make(text, options)


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

    @property
    def status(self) -> SourceStatus:
        return replace(self._source.status, frames=self._index)

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
                     captured_at=frame.captured_at)

    def _restart(self) -> None:
        self._source.close()
        self._source, self._offset = self._make(), None
        self._source.open()
        if self._closed:  # close() ran during the restart: do not leak the new lap
            self._source.close()

    def close(self) -> None:
        self._closed = True
        self._source.close()
