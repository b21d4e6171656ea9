"""What users type: source URIs and the passwords in them, fuzzed.

open_source either builds a source or raises the engine's own error (ConfigError, SourceError for
a path that is not there), never a bare ValueError, an IndexError or a huge allocation; no password
of a URL survives in any text the engine makes from it. The literal cases are what earlier fuzz
campaigns found, kept so CI catches them without hypothesis' luck.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import traceback
from collections.abc import Iterator
from unittest import mock
from urllib.parse import quote

import av
import cv2
import onnx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from segengine.capture import factory
from segengine.capture.factory import open_source
from segengine.capture.opencv import GSTREAMER_FIX
from segengine.capture.redact import MASK, RedactingFilter, Redactor, redact
from segengine.errors import ConfigError, SourceError

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


@contextlib.contextmanager
def no_io() -> Iterator[None]:
    """Building a source must not connect, open a camera or a file: any attempt fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a source was opened while only being built: {args!r:.200}")
    with mock.patch.object(socket.socket, "connect", refuse), mock.patch.object(av, "open", refuse), \
            mock.patch.object(cv2, "VideoCapture", refuse):
        yield


def build(text: str) -> object:
    """open_source(text) under no_io: the source, or the engine error it raised."""
    with no_io():
        try:
            source = open_source(text)
        except (ConfigError, SourceError) as exc:
            return exc
    assert isinstance(source.info.name, str)
    return source


# --- open_source -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "error", "match"), [
    ("rtsp://[::1", ConfigError, r"malformed URI.*unclosed or stray \[ \] around an IPv6"),  # a bare ValueError
    ("csi://[", ConfigError, "malformed URI"),
    ("synthetic://[::1?width=64", ConfigError, "malformed URI"),
    ("rtsp://cam:99999/x", ConfigError, r"port is no number in 0\.\.65535"),
    ("synthetic://?width=100000&height=100000", ConfigError, r"16\.\.8192 on each side"),  # was 27.9 GiB
    ("synthetic://?width=8192&height=8192", ConfigError, "at most 33 MP"),
    ("synthetic://?seed=-1", ConfigError, r"seed must be 0\.\.2\*\*64-1"),  # numpy's ValueError escaped
    ("synthetic://?fps=1e400", ConfigError, "fps must be a positive number up to 1000"),
    ("synthetic://?fps=nan", ConfigError, "fps must be a positive number"),
    ("synthetic://?fps=30/0", ConfigError, "not a number"),
    ("synthetic://?frames=" + "9" * 5000, ConfigError, "not an integer"),  # int()'s digit limit
    ("synthetic://?frames=10000000000", ConfigError, "frames must be 0..1000000000"),
    ("synthetic://?width=٣٢٠", ConfigError, "is not an integer"),  # Arabic-Indic digits: int() takes them
    ("synthetic://?width=1_000", ConfigError, "is not an integer"),
    ("²", SourceError, "source not found: ²"),  # "²".isdigit(): was taken for a camera, then int() failed
    ("٣", SourceError, "source not found"),  # was /dev/video٣
    ("/dev/video٣", SourceError, "source not found"),
    ("99999999999999999999", ConfigError, r"camera index .* out of range"),
    ("file:///tmp/a\x00b.mp4", ConfigError, "NUL byte"),  # os.stat's "embedded null byte" escaped
    ("file:///tmp/a%00b.mp4", ConfigError, "NUL byte"),  # the same, percent-encoded
    ("frames/\x00*.png", ConfigError, "NUL byte"),
    ("v4l2://cam", ConfigError, "camera index or a device path"),
    ("csi://0?width=²", ConfigError, r"width '²' is not a whole number in 16\.\.8192"),
    ("csi://99", ConfigError, r"sensor '99' is not a whole number in 0\.\.63"),
    ("csi://0?fps=-5", ConfigError, "fps '-5'"),
    ("   ", ConfigError, "empty source"),
])
def test_malformed_sources_are_config_errors(text: str, error: type[Exception], match: str) -> None:
    result = build(text)
    assert isinstance(result, error), result
    with pytest.raises(error, match=match):
        raise result


@pytest.mark.parametrize("text", ["synthetic://?fps=30000/1001", "synthetic://?width=7680&height=4320&frames=1",
                                  "0", "/dev/video3", "v4l2:///dev/video0", "v4l2://2", "rtsp://[::1]:554/x"])
def test_well_formed_sources_still_build(text: str) -> None:
    assert not isinstance(build(text), Exception)


_URI_TEXT = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s, rest: s + "://" + rest,
              st.sampled_from(sorted(factory.SCHEMES) + ["foo", "RTSP", "File"]), st.text(max_size=60)),
    st.builds(lambda key, value: f"synthetic://?{key}={value}",
              st.sampled_from(["width", "height", "fps", "frames", "seed", "objects", "live"]),
              st.text(alphabet="0123456789-+.e/_ ²٣naifNo", max_size=12)),
    st.builds(lambda value: f"csi://{value}", st.text(alphabet="0123456789?=&widthgsfp-²[]:@", max_size=20)),
)


@given(_URI_TEXT)
def test_open_source_builds_or_says_why(text: str) -> None:
    result = build(text)
    if isinstance(result, Exception):
        assert str(result), f"{type(result).__name__} without a message for {text!r}"


# --- redaction -------------------------------------------------------------------------------------

# Raw in a URL's userinfo: RFC 3986 unreserved and sub-delims, ':' and the '@' users write bare (urlsplit
# and FFmpeg take the last '@'). '*' is left out only because the mask is made of it.
_RAW_USERINFO = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()+,;=:@")
_RAW_QUERY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$()+,:@/?")
_PASSWORD = st.text(st.characters(codec="utf-8", exclude_characters="*"), min_size=4, max_size=16)


def _encode(password: str, raw: frozenset[str] | None) -> str:
    """``password`` as written in a URL: raw where ``raw`` allows, percent-encoded elsewhere."""
    return "".join(c if raw is not None and c in raw else quote(c, safe="") for c in password)


@st.composite
def _url_with_password(draw: st.DrawFn) -> tuple[str, str, tuple[str, ...]]:
    """(source text, password, the forms it must never appear in)."""
    password = draw(_PASSWORD)
    scheme = draw(st.sampled_from(["rtsp", "rtmp", "http", "https", "srt", "udp", "rtsps", "file", "v4l2",
                                   "csi", "synthetic", "foo"]))
    host = draw(st.sampled_from(["cam.local", "10.0.0.5:554", "[::1]:8554", "h"]))
    path = draw(st.sampled_from(["", "/", "/stream1", "/live/x.m3u8"]))
    form = draw(st.sampled_from(["userinfo-raw", "userinfo-encoded", "query", "query-raw", "gst-location",
                                 "gst-property"]))
    user = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8))
    hole = "\x00"  # where the password goes
    if form.startswith("userinfo") or form == "gst-location":
        written = _encode(password, _RAW_USERINFO if form != "userinfo-encoded" else None)
        template = f"{scheme}://{user}:{hole}@{host}{path}"
    else:
        name = draw(st.sampled_from(["password", "PASSWORD", "pwd", "token", "passphrase", "key"]))
        written = _encode(password, _RAW_QUERY if form == "query-raw" else None)
        template = f"{scheme}://{host}{path}?user={user}&{name}={hole}"
    if form == "gst-location":
        template = f"gst://rtspsrc location={template} latency=0 ! decodebin ! videoconvert ! appsink"
    elif form == "gst-property":
        written = _encode(password, _RAW_USERINFO - set("&;!'"))
        template = f"gst://rtspsrc location=rtsp://{host}/x user-id={user} user-pw={hole} ! appsink"
    forms = tuple({password, quote(password, safe=""), written})
    # A password that is part of the rest of the text (the user name, say) could not be told from it.
    assume(not any(f in template or f in MASK for f in forms))
    return template.replace(hole, written), password, forms


def _leaks(text: str, forms: tuple[str, ...]) -> list[str]:
    for fixed in (GSTREAMER_FIX, "; ".join(factory.FORMS)):  # our own words may hold any short password
        text = text.replace(fixed, "")
    return [f for f in forms if f in text]


def _said(exc: BaseException) -> str:
    """What a user sees of an error: its message and those of the exceptions it shows as its cause."""
    messages = []
    while exc is not None:
        messages.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)  # type: ignore[assignment]
    return "\n".join(messages)


@given(_url_with_password())
def test_no_password_survives_in_what_the_engine_says(case: tuple[str, str, tuple[str, ...]]) -> None:
    url, _, forms = case
    result = build(url)
    if isinstance(result, Exception):
        said = _said(result)
    else:
        said = result.info.name + repr(result)  # type: ignore[attr-defined]
    assert not _leaks(said, forms), said
    text = f"cannot open {url}: Connection refused ('{url}')"
    assert not _leaks(Redactor.for_url(url)(text), forms)
    record = logging.LogRecord("libav", logging.WARNING, __file__, 1, "ffmpeg: %s", (text,), None)
    RedactingFilter(Redactor.for_url(url)).filter(record)
    assert not _leaks(record.getMessage(), forms)


@given(_url_with_password())
def test_the_patterns_alone_mask_any_urls_password(case: tuple[str, str, tuple[str, ...]]) -> None:
    """Lines from FFmpeg, which knows no Redactor for the URL: the patterns must do it alone."""
    url, _, forms = case
    prefix = "[rtsp @ 0x55] method DESCRIBE failed for "  # left as it is: no URL in it
    out = redact(f"{prefix}{url} (401)")
    assert out.startswith(prefix) and not _leaks(out[len(prefix):], forms), out


@pytest.mark.parametrize(("url", "secret"), [
    ("rtsp://user:p@ss@host/x", "p@ss"),  # an @ in the password: the pattern stopped at the first
    ("rtsp://user:p@ss@host/x", "ss@host"),
    ("rtsp://user:p%40ss@host/x", "p%40ss"),
    ("rtsp://user:p%40ssword@host/x", "p@ssword"),
    ("file://user:p%40ss1@host/x.mp4", "p@ss1"),  # file:// decodes its path: the message showed it bare
    ("v4l2://user:s3cret@host", "s3cret"),  # v4l2:// took it as a device path and named the source so
    ("gst://rtspsrc location=rtsp://u:s3cret@h/x ! appsink", "s3cret"),  # the pipeline was the name
    ("gst://rtspsrc location=rtsp://u:s3cret@h/x", "s3cret"),  # "must end in an appsink: '...'"
    ("gst://rtspsrc location=rtsp://h/x user-pw=hunter22 ! appsink", "hunter22"),  # a GStreamer property
    ("rtspsrc location=rtsp://u:p@ss@h/x ! appsink", "p@ss"),  # a bare pipeline
    ("csi://u:s3cret@0", "s3cret"),
    ("foo://u:s3cret@h/x", "s3cret"),  # unsupported scheme, quoted with repr
    ("rtsp://[::1?password=s3cret", "s3cret"),  # malformed, quoted
    ("http://cam/snap?user=admin&password=it's-me", "it's-me"),  # a quote in a query value
    ("srt://h:9000?passphrase=longsecretphrase", "longsecretphrase"),
])
def test_known_leaks_stay_closed(url: str, secret: str) -> None:
    result = build(url)
    said = (_said(result) + "".join(traceback.format_exception(result)) if isinstance(result, Exception)
            else result.info.name)  # type: ignore[attr-defined]
    assert secret not in said, said
    assert secret not in Redactor.for_url(url)(f"error: {url} ('{url}')")


def test_masking_leaves_text_without_secrets_alone() -> None:
    text = "http://cam/snap?user=admin&password=hunter22&res=hd"
    assert redact(text) == "http://cam/snap?user=admin&password=***&res=hd"
    assert redact("rtsp://host[:port]/path (user:pass@ before the host)") == \
        "rtsp://host[:port]/path (user:pass@ before the host)"
    assert redact("mail me at a@b.c, see rtsp://cam/x") == "mail me at a@b.c, see rtsp://cam/x"
