"""Atheris targets for what users type and hand in: source URIs, passwords in URLs, class lists, ONNX files.

Each target swallows only the errors its parser documents (ConfigError, SourceError for a path that
is not there, ModelError); anything else escaping, or a password found in what the engine says,
is a crash. Sources are only built, never opened; sockets, av.open and cv2.VideoCapture refuse.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import av
import cv2
import numpy as np
import onnx
import onnx.helper as oh

from segengine.capture.factory import open_source
from segengine.capture.redact import MASK, Redactor, redact
from segengine.errors import ConfigError, ModelError, SourceError
from segengine.graph.class_list import parse_names, read_class_list
from segengine.graph.custom import inspect_onnx

_SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-inputs-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a source was opened while only being built: {args!r:.200}")


@contextlib.contextmanager
def _no_io() -> Iterator[None]:
    """Building must not touch the network or a device; restored after, for whoever imports us too."""
    saved = socket.socket.connect, av.open, cv2.VideoCapture
    socket.socket.connect, av.open, cv2.VideoCapture = _refuse, _refuse, _refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, av.open, cv2.VideoCapture = saved  # type: ignore[method-assign]


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")  # as Python decodes argv


def fuzz_open_source(data: bytes) -> None:
    text = _text(data)
    if "*" in text and text.lstrip().startswith("/"):
        return  # an absolute glob walks the whole disk: a slow test of glob, not of us
    try:
        with _no_io():
            source = open_source(text)
    except (ConfigError, SourceError) as exc:
        assert str(exc)
    else:
        assert isinstance(source.info.name, str)


_SCHEMES = ("rtsp", "rtmp", "http", "srt", "file", "v4l2", "csi", "synthetic", "foo")


def fuzz_redaction(data: bytes) -> None:
    """A URL with a password (as fuzzed) in the userinfo, a query or a gst pipeline: it must not leak."""
    # bytes 0-2 choose the scheme, the form and the encoding; the rest is "password NUL around"
    head, rest = data[:3].ljust(3, b"\0"), data[3:].decode("utf-8", "ignore")
    scheme, form, encoded = _SCHEMES[head[0] % len(_SCHEMES)], head[1] % 4, bool(head[2] & 1)
    password, _, around = rest.partition("\0")
    password, around = password[:16], around[:24]
    if len(password) < 4 or "*" in password:
        return
    written = quote(password, safe="" if encoded else "-._~!$&'()+,;=:@")
    hole = "\ud800"  # a lone surrogate: never in text decoded from UTF-8
    template = [f"{scheme}://user:{hole}@cam.local:554/x", f"{scheme}://cam/x?user=u&password={hole}",
                f"gst://rtspsrc location=rtsp://u:{hole}@h/x ! appsink",
                f"{scheme}://cam/x?token={hole}"][form]
    if form == 1 or form == 3:
        written = quote(password, safe="" if encoded else "-._~!$()+,:@/?")
    forms = {password, quote(password, safe=""), written}
    context = f"{around} {template} {around}"
    if any(f in MASK or f in context.replace(hole, "") or f in context.replace(hole, MASK) for f in forms):
        return  # a password that is part of the rest of the text could not be told from it
    url = template.replace(hole, written)
    try:
        with _no_io():
            source = open_source(url)
        said = source.info.name + repr(source)
    except (ConfigError, SourceError) as exc:
        said = str(exc)
    text = f"{around} {url} {around}"
    for out in (said, Redactor.for_url(url)(text), redact(text)):
        leaked = [f for f in forms if f in out]
        assert not leaked, f"password {leaked} leaked from {url!r}: {out!r}"


def fuzz_class_list(data: bytes) -> None:
    suffix = (".txt", ".json")[data[0] & 1] if data else ".txt"
    file = _SCRATCH / f"classes{suffix}"
    file.write_bytes(data[1:])
    try:
        names = read_class_list(file)
    except ConfigError:
        return
    assert names and all(isinstance(n, str) and n.strip() for n in names)


def fuzz_names_metadata(data: bytes) -> None:
    try:
        names = parse_names(Path("m.onnx"), _text(data))
    except ModelError:
        return
    assert names and all(isinstance(n, str) for n in names)


def fuzz_onnx(data: bytes) -> None:
    file = _SCRATCH / "model.onnx"
    file.write_bytes(data)
    try:
        inspect_onnx(file)
    except (ModelError, ConfigError) as exc:
        assert "model.onnx" in str(exc), f"an error that does not name the file: {exc}"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "open_source": fuzz_open_source,
    "redaction": fuzz_redaction,
    "class_list": fuzz_class_list,
    "names": fuzz_names_metadata,
    "onnx": fuzz_onnx,
}


def _tiny(outputs: list[tuple[str, int, list[int | str]]], names: str | None = None) -> bytes:
    weight = oh.make_tensor("w", onnx.TensorProto.FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12).tolist())
    graph = oh.make_graph([oh.make_node("Identity", ["w"], ["n"])], "seed",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
                          [oh.make_tensor_value_info(n, t, s) for n, t, s in outputs], [weight])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    if names is not None:
        oh.set_model_props(model, {"names": names})
    return model.SerializeToString()


F = onnx.TensorProto.FLOAT
SEEDS: dict[str, list[bytes]] = {
    "open_source": [b"rtsp://user:pw@cam:554/x", b"synthetic://?width=64&height=48&fps=30000/1001&frames=3",
                    b"csi://0?width=1280&height=720&fps=30", b"gst://videotestsrc ! appsink", b"0",
                    b"/dev/video0", b"v4l2:///dev/video1", b"file:///no/such.mp4", b"frames/*.png", b"http://h/x.m3u8"],
    "redaction": [b"\x00\x00\x01hunter22\x00around", b"\x03\x01\x00p@ss:w/rd%\x00x", b"\x02\x02\x01s3cret!\x00"],
    "class_list": [b"\x00person\nbicycle\ncar\n", b'\x01["person", "car"]', b"\x00\xef\xbb\xbfroad\r\nsky"],
    "names": [b"{0: 'person', 1: 'bicycle'}", b"['a', 'b']", b"{0: 'a'}"],
    "onnx": [_tiny([("y", F, [1, 4, 16, 16])]), _tiny([("ids", onnx.TensorProto.INT64, [1, "h", "w"])], "['a']"),
             _tiny([("p", F, [1, 252, 39]), ("q", F, [1, 32, 16, 16])], "{0: 'a', 1: 'b'}"),
             _tiny([("p", F, [1, 38, "n"]), ("q", F, [1, 32, 16, 16])])],
}
