"""Credentials in URLs are masked in any text, in our log lines and in FFmpeg's own."""

from __future__ import annotations

import logging
from pathlib import Path

import av.logging
import pytest

from segengine.capture.base import SourceOptions
from segengine.capture.factory import open_source
from segengine.capture.redact import RedactingFilter, Redactor, redact
from segengine.logs import configure
from tests.http_servers import HttpServer
from tests.live_servers import moving_frames, write_hls


@pytest.mark.parametrize(("text", "expected"), [
    ("rtsp://admin:hunter22@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
    ("failed: 'rtmp://u:p@host/live' (timeout)", "failed: 'rtmp://***@host/live' (timeout)"),
    ("http://cam/snap?user=admin&password=hunter22&res=hd", "http://cam/snap?user=admin&password=***&res=hd"),
    ("https://h/x.m3u8?token=abc.def&pwd=zz", "https://h/x.m3u8?token=***&pwd=***"),
    ("srt://h:9000?passphrase=longsecretphrase", "srt://h:9000?passphrase=***"),
    ("rtsp://10.0.0.5/stream1 has no secret", "rtsp://10.0.0.5/stream1 has no secret"),
    ("two: rtsp://a:b@x/1 and http://c:d@y/2", "two: rtsp://***@x/1 and http://***@y/2"),
])
def test_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_exact_secrets_of_a_url_are_masked_bare_encoded_and_as_basic_auth() -> None:
    url = "rtsp://admin:p%40ss-w0rd@cam.local/x?token=t0ken-123"
    r = Redactor.for_url(url)
    assert r(url) == "rtsp://***@cam.local/x?token=***"
    assert r("password p@ss-w0rd was rejected") == "password *** was rejected"  # percent-decoded too
    assert r("Authorization: Basic YWRtaW46cEBzcy13MHJk") == "Authorization: Basic ***"  # admin:p@ss-w0rd
    assert r("token t0ken-123 expired") == "token *** expired"
    assert Redactor.for_url("rtsp://a:b@x/1").secrets == ()  # too short to mask bare; patterns still apply


def test_filter_masks_formatted_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("libav.rtsp", logging.WARNING, __file__, 1, "cannot read %s: %s", (
        "rtsp://u:sekrit-pw@h/x", "sekrit-pw"), None)
    assert RedactingFilter(Redactor.for_url("rtsp://u:sekrit-pw@h/x")).filter(record)
    assert record.getMessage() == "cannot read rtsp://***@h/x: ***"
    try:
        raise ValueError("rtsp://u:sekrit-pw@h/x")
    except ValueError:
        import sys
        record = logging.LogRecord("segengine", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    RedactingFilter().filter(record)
    assert "sekrit-pw" not in (record.exc_text or "") and "***@h/x" in (record.exc_text or "")


def test_ffmpegs_own_messages_are_redacted_on_the_command_lines_handler(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FFmpeg's HLS reader logs "Opening 'URL' for reading" with the user's credentials in it."""
    write_hls(tmp_path / "hls", moving_frames(10, 64, 48), fps=10)
    with HttpServer(tmp_path) as http:
        url = http.url("hls/index.m3u8").replace("http://", "http://viewer:t0p-s3cret@")
        handler = configure(Redactor.for_url(url), verbose=True)
        av.logging.set_level(av.logging.VERBOSE)  # "Opening ..." is an info line: lower both levels
        logging.getLogger("libav").setLevel(logging.DEBUG)
        try:
            source = open_source(url, options=SourceOptions(open_timeout=5))
            source.open()
            source.read(1.0)
            source.close()
        finally:
            av.logging.set_level(None)
            logging.getLogger("libav").setLevel(logging.WARNING)
            logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "ffmpeg: Opening 'http://***@127.0.0.1" in err  # FFmpeg spoke, through our handler
    assert "t0p-s3cret" not in err and "viewer:" not in err
