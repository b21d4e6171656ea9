"""Network streams and cameras against real servers on 127.0.0.1: live semantics and faults."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from segengine.capture.base import SourceOptions
from segengine.capture.factory import open_source
from segengine.capture.opencv import OpenCVSource, opencv_has_gstreamer
from segengine.capture.reconnect import ReconnectingSource
from segengine.capture.thread import CaptureThread
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame
from tests.http_servers import HttpServer, SilentTcpServer
from tests.live_servers import RtspServer, moving_frames, rtsp_unavailable, write_hls, write_mp4
from tests.reading import read_frames

needs_rtsp = pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))
QUICK = SourceOptions(open_timeout=5.0, read_timeout=2.0, stall=4.0, backoff=0.2, backoff_cap=1.0)
N = 30


def frames(capture: CaptureThread, n: int, timeout: float = 20.0) -> list[Frame]:
    return read_frames(capture.get, n, timeout)


def increasing(frames_: list[Frame]) -> bool:
    pts = [f.pts for f in frames_]
    return all(b > a for a, b in zip(pts, pts[1:]))


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> HttpServer:
    root = tmp_path_factory.mktemp("www")
    images = moving_frames(N, 160, 96)
    write_mp4(root / "clip.mp4", images, fps=15)
    write_mp4(root / "fast.mp4", moving_frames(N, 320, 240), fps=15, faststart=True)  # index first: streamable
    write_hls(root / "hls", images, fps=15)
    with HttpServer(root, mjpeg_size=(160, 96), stall_for=20.0) as server:
        yield server


# --- RTSP ------------------------------------------------------------------------------------

@needs_rtsp
def test_rtsp_killed_and_restarted_the_feed_continues() -> None:
    with RtspServer() as server:
        source = open_source(server.url, options=QUICK)
        assert isinstance(source, ReconnectingSource) and source.info.live
        with CaptureThread(source) as capture:
            before = frames(capture, 10)
            assert capture.policy == "latest" and before[0].image.shape == (240, 320, 3)
            server.kill()  # a crash: no goodbye to the client
            time.sleep(1.5)
            server.restart()
            after = frames(capture, 10)
            status = capture.status
    assert status.reconnects >= 1 and status.gaps >= 1
    assert increasing(before + after)
    assert max(np.diff([f.pts for f in before + after])) > 1.5  # the outage (≥ 1.5 s) shows in the timeline


@needs_rtsp
def test_rtsp_server_that_stalls_mid_stream_is_reconnected() -> None:
    with RtspServer() as server:
        source = open_source(server.url, options=QUICK)
        with CaptureThread(source) as capture:
            frames(capture, 5)
            os.kill(server.pid, signal.SIGSTOP)  # frozen: sockets stay open, nothing is sent
            try:
                deadline = time.monotonic() + 3 * QUICK.read_timeout + 2.0  # FFmpeg's RTSP retries a read once
                while capture.status.state != "reconnecting":  # the read timed out; it did not hang
                    assert time.monotonic() < deadline, capture.status
                    time.sleep(0.1)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            frames(capture, 5)
            assert capture.status.reconnects >= 1


@needs_rtsp
def test_credentials_never_appear_in_messages_or_names(caplog: pytest.LogCaptureFixture) -> None:
    with RtspServer(user="viewer", password="s3cret-pw") as server:
        good = open_source(server.url, options=QUICK)
        good.open()
        assert "s3cret-pw" not in good.info.name and "***@" in good.info.name
        good.close()
        wrong = open_source(server.url.replace("s3cret-pw", "wrong-pw1"), options=QUICK)
        with pytest.raises(SourceError, match="refused the credentials") as info:
            wrong.open()
        assert "wrong-pw1" not in str(info.value) and "viewer:" not in str(info.value)
        server.kill()
        with pytest.raises(SourceError) as info:  # FFmpeg's own "Connection refused: 'rtsp://...'" text
            open_source(server.url, options=QUICK).open()
        assert "s3cret-pw" not in str(info.value)
    assert not any("s3cret-pw" in r.getMessage() for r in caplog.records)


# --- timeouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_server_that_accepts_and_never_answers_fails_within_the_open_timeout(scheme: str) -> None:
    with SilentTcpServer() as silent:
        source = open_source(f"{scheme}://127.0.0.1:{silent.port}/x", options=SourceOptions(open_timeout=1.0))
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer within the 1 s open timeout"):
            source.open()
        assert time.monotonic() - start < 5.0 and silent.accepts >= 1


def test_remote_file_that_stalls_fails_within_the_read_timeout(http: HttpServer) -> None:
    half = (http.root / "fast.mp4").stat().st_size // 2
    source = open_source(http.url(f"stall/fast.mp4?after={half}"), options=SourceOptions(read_timeout=1.0))
    source.open()
    got, start = [], time.monotonic()
    with pytest.raises(SourceError, match=r"stall/fast\.mp4.*reading failed after \d+ frames"):
        while True:
            got.append(source.read(1.0))
    assert time.monotonic() - start < 6.0 and 0 < len(got) < N  # the frames before the stall, then the error
    source.close()


# --- HTTP ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["clip.mp4", "hls/index.m3u8"])
def test_http_file_and_vod_playlist_are_read_whole_like_files(http: HttpServer, path: str) -> None:
    source = open_source(http.url(path), options=QUICK)
    source.open()
    assert not source.info.live  # the container knows its duration: finite, lossless
    with CaptureThread(source, queue_size=2) as capture:
        got = frames(capture, N)
        with pytest.raises(EndOfStream):
            capture.get(5.0)
        assert capture.policy == "lossless" and capture.dropped == 0
    assert increasing(got) and got[0].image.shape == (96, 160, 3)


def test_http_mjpeg_is_a_live_feed(http: HttpServer) -> None:
    source = open_source(http.url("mjpeg"), options=QUICK)
    with CaptureThread(source) as capture:
        got = frames(capture, 8)
        assert capture.policy == "latest" and source.info.live
    assert increasing(got) and got[0].image.shape == (96, 160, 3)
    assert not np.array_equal(got[0].image, got[-1].image)


def test_http_errors_are_clear(http: HttpServer) -> None:
    with pytest.raises(SourceError, match=r"no stream at that path \(404"):
        open_source(http.url("nothing-here.mp4"), options=QUICK).open()
    with pytest.raises(SourceError, match="connection refused"):
        open_source("http://127.0.0.1:1/x", options=QUICK).open()
    with pytest.raises(SourceError, match="no SRT support"):
        open_source("srt://127.0.0.1:9/x", options=QUICK).open()


# --- cameras ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "backend"), [("/dev/video57", "opencv"), ("57", "opencv"),
                                               ("v4l2:///dev/video57", "pyav")])
def test_missing_camera_is_said_plainly(uri: str, backend: str) -> None:
    source = open_source(uri, options=SourceOptions(camera_backend=backend, open_timeout=2.0))
    assert source.info.live and source.info.name == "/dev/video57"
    with pytest.raises(SourceError, match="/dev/video57"):
        source.open()


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("uri", ["csi://0", "csi://1?width=1920&height=1080&fps=30",
                                 "videotestsrc ! videoconvert ! appsink"])
def test_gstreamer_sources_say_how_to_get_gstreamer(uri: str) -> None:
    with pytest.raises(SourceError, match=r"built without GStreamer.*JetPack.*WITH_GSTREAMER=ON"):
        open_source(uri)


def test_gstreamer_uri_errors() -> None:
    with pytest.raises(ConfigError, match="must end in an appsink"):
        open_source("gst://videotestsrc ! fakesink")
    with pytest.raises(ConfigError, match="does not know exposure"):
        open_source("csi://0?exposure=3")


def test_opencv_capture_reads_in_order_with_rgb_and_increasing_pts(tmp_path: Path) -> None:
    """The camera class on OpenCV's FFmpeg backend (no camera here): same reads, same contract."""
    images = [np.full((96, 160, 3), (200, 40, 10 + 8 * i), np.uint8) for i in range(12)]
    path = write_mp4(tmp_path / "cam.mp4", images, fps=12)
    source = OpenCVSource(str(path), cv2.CAP_FFMPEG, name="cam", live=False)
    source.open()
    assert source.info.size == (96, 160)
    got = []
    with pytest.raises(EndOfStream):
        while True:
            got.append(source.read(1.0))
    source.close()
    assert [f.index for f in got] == list(range(12)) and increasing(got)
    assert abs(int(got[5].image[..., 0].mean()) - 200) < 10  # RGB order, not OpenCV's BGR
    with pytest.raises(SourceError, match="closed"):
        source.read(1.0)
