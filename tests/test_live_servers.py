"""The live-server test infrastructure (tests/live_servers.py) proven with plain PyAV clients.

If these pass, a failing capture test is the capture code's fault, not the servers'.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from tests.http_servers import HttpServer, SilentTcpServer
from tests.live_servers import RtspServer, free_port, moving_frames, rtsp_unavailable, write_hls, write_mp4

FPS, COUNT = 15, 45  # 3 s of video: three 1 s HLS segments
TCP = {"rtsp_transport": "tcp"}
MARGIN = 4.0  # seconds allowed beyond a timeout; generous, shared 2-core CI machines are slow

needs_rtsp = pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))


def frames_of(url: str, count: int, **kwargs: object) -> list[av.VideoFrame]:
    """The first `count` decoded frames (fewer if the stream ends first)."""
    kwargs.setdefault("timeout", (5, 5))
    frames = []
    with av.open(url, **kwargs) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def changes(frames: list[av.VideoFrame]) -> bool:
    first, last = (f.to_ndarray(format="rgb24").astype(np.int16) for f in (frames[0], frames[-1]))
    return bool(np.abs(first - last).max() > 30)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    images = moving_frames(COUNT)
    write_mp4(root / "clip.mp4", images, FPS)
    write_mp4(root / "fast.mp4", images, FPS, faststart=True)
    write_hls(root / "hls", images, FPS)
    return root


@pytest.fixture(scope="module")
def http(media: Path) -> Iterator[HttpServer]:
    with HttpServer(media, stall_for=20.0) as server:
        yield server


# --- RTSP -----------------------------------------------------------------------------------------

@needs_rtsp
def test_rtsp_plays_moving_h264() -> None:
    with RtspServer(width=320, height=240, fps=FPS) as server:
        frames = frames_of(server.url, 8, options=TCP)
    assert len(frames) == 8
    assert (frames[0].width, frames[0].height) == (320, 240)
    assert changes(frames)  # the ball moves: a frozen source would fail here
    times = [f.time for f in frames if f.time is not None]
    assert times == sorted(times) and times[-1] > times[0]


@needs_rtsp
def test_rtsp_credentials_required() -> None:
    with RtspServer(user="alice", password="s3c:r@t") as server:
        assert server.url.startswith("rtsp://alice:s3c%3Ar%40t@127.0.0.1:")
        assert len(frames_of(server.url, 2, options=TCP)) == 2
        with pytest.raises(av.error.HTTPUnauthorizedError):
            frames_of(server.plain_url, 1, options=TCP)
        with pytest.raises(av.error.HTTPUnauthorizedError):
            frames_of(server.plain_url.replace("rtsp://", "rtsp://alice:wrong@"), 1, options=TCP)


@needs_rtsp
def test_rtsp_killed_then_restarted_on_the_same_port() -> None:
    port = free_port()
    with RtspServer(port=port) as server:
        container = av.open(server.url, options=TCP, timeout=(5, 5))
        try:
            decoded = container.decode(video=0)
            next(decoded)
            pid = server.pid
            server.kill()
            assert not server.running
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # reaped, not a zombie
            # Over TCP a dead server reads as end of stream (or an error), and quickly.
            started = time.monotonic()
            with pytest.raises((StopIteration, av.FFmpegError)):
                for _ in range(10 * FPS):
                    next(decoded)
            assert time.monotonic() - started < 5 + MARGIN
        finally:
            container.close()
        server.start()
        assert server.port == port and len(frames_of(server.url, 2, options=TCP)) == 2
        server.restart()  # SIGTERM, then the same port again at once
        assert server.port == port and len(frames_of(server.url, 2, options=TCP)) == 2


@needs_rtsp
def test_rtsp_stop_ends_a_frozen_server_promptly() -> None:
    server = RtspServer().start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    server.stop()  # SIGTERM + SIGCONT: exits cleanly instead of waiting out the grace period
    assert time.monotonic() - started < 3
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_rtsp
def test_rtsp_mjpeg() -> None:
    with RtspServer(codec="mjpeg") as server:
        frames = frames_of(server.url, 3, options=TCP)
    assert len(frames) == 3 and frames[0].width == 320


# --- HTTP files and HLS ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip.mp4", "fast.mp4"])
def test_http_mp4_decodes_fully(http: HttpServer, name: str) -> None:
    frames = frames_of(http.url(name), COUNT + 10)
    assert len(frames) == COUNT
    assert http.hits(name) >= 1


def test_http_hls_decodes_fully(http: HttpServer, media: Path) -> None:
    segments = sorted(p.name for p in (media / "hls").glob("*.ts"))
    assert len(segments) == 3
    with av.open(http.url("hls/index.m3u8"), timeout=(5, 5)) as container:
        assert container.format.name == "hls"
        frames = list(container.decode(video=0))
    assert len(frames) == COUNT
    assert all(http.hits(f"hls/{name}") >= 1 for name in segments)


def test_http_range_request(http: HttpServer, media: Path) -> None:
    import urllib.error
    import urllib.request

    data = (media / "clip.mp4").read_bytes()
    for ranged, expected in (("bytes=10-19", data[10:20]), ("bytes=-5", data[-5:]), ("bytes=100-", data[100:])):
        request = urllib.request.Request(http.url("clip.mp4"), headers={"Range": ranged})
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.status == 206 and reply.read() == expected
    beyond = urllib.request.Request(http.url("clip.mp4"), headers={"Range": f"bytes={len(data)}-"})
    with pytest.raises(urllib.error.HTTPError, match="416"):
        urllib.request.urlopen(beyond, timeout=5)


# --- MJPEG ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [None, "mpjpeg"])
def test_mjpeg_stream_decodes(http: HttpServer, fmt: str | None) -> None:
    # FFmpeg probes multipart/x-mixed-replace as mpjpeg by itself; the hint only skips the probe.
    frames = frames_of(http.url("mjpeg"), 6, format=fmt)
    assert len(frames) == 6 and (frames[0].width, frames[0].height) == (320, 240)
    assert changes(frames)


def test_mjpeg_frames_limit_ends_the_stream(http: HttpServer) -> None:
    frames = []
    with av.open(http.url("mjpeg?frames=4"), format="mpjpeg", timeout=(5, 5)) as container:
        # FFmpeg's mpjpeg demuxer reports the end of the body as EIO, not as end of file.
        with pytest.raises(av.error.OSError) as error:
            for frame in container.decode(video=0):
                frames.append(frame)
    assert len(frames) == 4 and error.value.errno == 5


# --- stalls, drops, silence -----------------------------------------------------------------------

def test_stall_during_open_times_out(http: HttpServer) -> None:
    started = time.monotonic()
    with pytest.raises(av.FFmpegError):
        frames_of(http.url("stall/fast.mp4?after=1000"), 1, timeout=(2, 2))
    assert time.monotonic() - started < 2 + MARGIN


def test_stall_during_read_times_out(http: HttpServer) -> None:
    got: list[av.Packet] = []
    with av.open(http.url("stall/fast.mp4?after=20000"), timeout=(2, 2)) as container:
        started = time.monotonic()
        # Demuxing: the cut packet comes out flagged corrupt, then the interrupt raises ExitError.
        with pytest.raises(av.FFmpegError):
            for packet in container.demux(video=0):
                got.append(packet)
        assert time.monotonic() - started < 2 + MARGIN
    assert 0 < len(got) < COUNT


def test_drop_resets_the_connection(http: HttpServer) -> None:
    before = http.hits("drop/fast.mp4")
    started = time.monotonic()
    with pytest.raises(av.FFmpegError):
        frames_of(http.url("drop/fast.mp4?after=20000"), COUNT + 10)
    assert time.monotonic() - started < MARGIN
    assert http.hits("drop/fast.mp4") == before + 1


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_silent_server_times_out(scheme: str) -> None:
    with SilentTcpServer() as silent:
        started = time.monotonic()
        with pytest.raises(av.FFmpegError):
            av.open(f"{scheme}://127.0.0.1:{silent.port}/x", options=TCP if scheme == "rtsp" else {},
                    timeout=(1, 1))
        assert time.monotonic() - started < 1 + MARGIN
        assert silent.accepts >= 1


def test_http_stop_ends_live_connections(media: Path) -> None:
    server = HttpServer(media, stall_for=60.0).start()
    container = av.open(server.url("mjpeg"), format="mpjpeg", timeout=(5, 5))
    stalled = threading.Thread(target=lambda: _swallow(server.url("stall/fast.mp4?after=100")), daemon=True)
    try:
        next(container.decode(video=0))
        stalled.start()
        assert server.wait_for_hits("stall/fast.mp4", 1, timeout=5)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2 + 1  # stop() waits at most 2 s for handlers
        assert not server._active  # every handler thread has finished
    finally:
        container.close()
        server.stop()
    stalled.join(5 + MARGIN)
    assert not stalled.is_alive()


def _swallow(url: str) -> None:
    try:
        frames_of(url, 1, timeout=(5, 5))
    except (av.FFmpegError, IndexError):  # IndexError: cut in the header, the MP4 opened with no streams
        pass
