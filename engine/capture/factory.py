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
from segengine.capture.synthetic import SyntheticSource
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DEVICE = re.compile(r"^/dev/video\d+$")
FORMS = ("path/to/video.mp4 or file:///abs/path.mp4 (any file FFmpeg reads)",
         "path/to/folder or 'frames/*.png' (images in natural order)",
         "rtsp://[user:pass@]host[:port]/path, rtmp://, http(s)://... (.mp4, MJPEG, .m3u8 HLS), srt://, udp:// "
         "(network streams)",
         "0 or /dev/video0 (a webcam, V4L2)",
         "csi://0?width=1280&height=720&fps=30 (Jetson CSI camera) or gst://PIPELINE ! appsink (GStreamer)",
         "synthetic://?width=640&height=360&fps=25&frames=100&seed=0&live=0 (test scene)")


def _open_path(text: str, options: SourceOptions) -> Source:
    """An existing folder or a glob → images; anything else must be an existing file → PyAV."""
    if os.path.isdir(text) or (is_glob(text) and not os.path.exists(text)):
        list_images(text)  # raises now, with the reason, when there is nothing to read
        return ImageFolderSource(text)
    if not os.path.exists(text):
        raise SourceError(f"source not found: {text} is no existing file or folder (check the path; "
                          f"relative paths start at {Path.cwd()}); supported forms: " + "; ".join(FORMS))
    check_readable_file(Path(text))  # e.g. a 0-byte file, said plainly before FFmpeg's 'Invalid data'
    return PyAVFileSource(text, max_pixels=options.max_pixels)


def _file(uri: str, options: SourceOptions) -> Source:
    path = unquote(urlsplit(uri).path if uri.startswith("file:///") else uri[len("file://"):])
    return _open_path(path, options)


def _camera(device: str, options: SourceOptions) -> Source:
    """A V4L2 webcam by index or path, through OpenCV (default) or PyAV's v4l2 demuxer."""
    path = f"/dev/video{device}" if device.isdigit() else device
    if options.camera_backend == "pyav":
        def make() -> Source:
            return PyAVSource(path, name=path, live=True, fmt="v4l2", max_pixels=options.max_pixels,
                              timeout=(options.open_timeout, options.read_timeout))
    else:
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        target: int | str = int(device) if device.isdigit() else path

        def make() -> Source:
            return OpenCVSource(target, api, name=path)
    return ReconnectingSource(make, options, name=path)


def _gstreamer(pipeline: str, name: str, options: SourceOptions) -> Source:
    if not opencv_has_gstreamer():  # said now, before any thread starts
        raise SourceError(f"cannot open {name}: {GSTREAMER_FIX}")
    return ReconnectingSource(lambda: OpenCVSource(pipeline, cv2.CAP_GSTREAMER, name=name), options, name=name)


def _gst(uri: str, options: SourceOptions) -> Source:
    pipeline = uri[len("gst://"):]
    if "appsink" not in pipeline:
        raise ConfigError(f"GStreamer pipeline must end in an appsink (e.g. '... ! videoconvert ! "
                          f"video/x-raw, format=BGR ! appsink drop=true max-buffers=1'): {pipeline!r}")
    return _gstreamer(pipeline, uri, options)


def _csi(uri: str, options: SourceOptions) -> Source:
    parts = urlsplit(uri)
    params = dict(parse_qsl(parts.query))
    spec = {"width": 1280, "height": 720, "fps": 30}
    if unknown := sorted(set(params) - set(spec)):
        raise ConfigError(f"csi:// does not know {', '.join(unknown)}; use {', '.join(spec)}")
    try:
        sensor = int(parts.netloc or "0")
        values = {key: int(params.get(key, default)) for key, default in spec.items()}
    except ValueError:
        raise ConfigError(f"{uri}: the sensor and width/height/fps must be whole numbers") from None
    return _gstreamer(csi_pipeline(sensor, **values), uri, options)


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


def _synthetic(uri: str, _options: SourceOptions) -> Source:
    params = dict(parse_qsl(urlsplit(uri).query, keep_blank_values=True))
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
    "v4l2": lambda uri, options: _camera(uri[len("v4l2://"):], options),
    **{scheme: network_source for scheme in NETWORK_SCHEMES},
})


def open_source(uri: str | os.PathLike[str], *, loop: bool = False, options: SourceOptions | None = None) -> Source:
    """Build (not open) the source for ``uri``. ``loop`` replays a finite source forever;
    ``options`` set timeouts, reconnection and limits (defaults: ``SourceOptions()``)."""
    text = os.fspath(uri)
    build = _builder(text, options or SourceOptions())
    source = build()
    if not loop:
        return source
    if source.info.live:
        raise ConfigError(f"loop=True needs a finite, non-live source; {source.info.name} is live")
    return LoopingSource(build, first=source)


def _builder(text: str, options: SourceOptions) -> Callable[[], Source]:
    if not text.strip():
        raise ConfigError("empty source; use one of: " + "; ".join(FORMS))
    device = text.strip()
    if device.isdigit() or _DEVICE.match(device):
        return lambda: _camera(device, options)
    if " ! " in text and not _SCHEME.match(text):  # a bare GStreamer pipeline
        return lambda: _gst("gst://" + text, options)
    match = _SCHEME.match(text)
    if not match:
        return lambda: _open_path(text, options)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"unsupported source scheme {scheme}:// in {text!r}; supported forms: "
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
