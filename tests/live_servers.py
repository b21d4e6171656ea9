"""A real RTSP server on 127.0.0.1 for live-source tests (HTTP and TCP ones are in
http_servers.py), plus the moving test frames and the MP4 and HLS writers for what they serve.

Every server is a context manager that stops itself; every wait here is bounded in time.
Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import av
import cv2
import numpy as np

HOST = "127.0.0.1"
SYSTEM_PYTHON = "/usr/bin/python3"  # has gi + GstRtspServer (Debian packages); the venv has not
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it; a tiny race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> bool:
    """True once something accepts on 127.0.0.1:port, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@lru_cache(maxsize=1)
def rtsp_unavailable() -> str | None:
    """Why the RTSP server cannot run here (a skip reason), or None when it can."""
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if not Gst.ElementFactory.find(e)]; "
             "assert not missing, missing")
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot run the GStreamer RTSP server: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{SYSTEM_PYTHON} cannot import GstRtspServer or lacks x264enc ({last}); install "
                "gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 gstreamer1.0-plugins-ugly gstreamer1.0-rtsp")
    return None


class RtspServer:
    """tests/rtsp_server.py in a child process of the system Python, H.264 on rtsp://127.0.0.1:PORT/PATH.

    ``raw``: serve that file's I420 frames (width × height each) in a loop instead of a test
    pattern; ``clock``: burn the wall-clock time into each frame (tests/clock_code.py);
    ``exit_with_parent``: the server ends when this process dies, even by SIGKILL (Linux)."""

    def __init__(self, port: int | None = None, path: str = "/x", width: int = 320, height: int = 240,
                 fps: int = 15, user: str | None = None, password: str | None = None,
                 codec: str = "h264", raw: Path | None = None, clock: bool = False,
                 exit_with_parent: bool = False) -> None:
        self.port = port if port is not None else free_port()
        self.path, self.width, self.height, self.fps = path, width, height, fps
        self.user, self.password, self.codec = user, password, codec
        self.raw, self.clock, self.exit_with_parent = raw, clock, exit_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def plain_url(self) -> str:
        return f"rtsp://{HOST}:{self.port}{self.path}"

    @property
    def url(self) -> str:
        """The URL with the credentials in it when the server has some."""
        if self.user is None:
            return self.plain_url
        credentials = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}"
        return f"rtsp://{credentials}@{HOST}:{self.port}{self.path}"

    @property
    def pid(self) -> int:
        """The server process (SIGSTOP freezes it: a server that stalls with its sockets open)."""
        assert self._proc is not None, "server not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> RtspServer:
        if self.running:
            return self
        reason = rtsp_unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        cmd = [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self.port), "--path", self.path,
               "--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps),
               "--codec", self.codec]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or ""]
        cmd += ["--raw", str(self.raw)] if self.raw is not None else []
        cmd += ["--clock"] if self.clock else []
        cmd += ["--exit-with-parent"] if self.exit_with_parent else []
        # stderr to a file, not a pipe: GStreamer may log a lot and nobody drains it while serving.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._stderr)
        deadline = time.monotonic() + timeout
        if not self._wait_ready(deadline) or not wait_for_port(self.port, max(0.1, deadline - time.monotonic())):
            error = self._stderr_text()
            self.kill()
            raise RuntimeError(f"RTSP server on port {self.port} did not start within {timeout:.0f} s:\n{error}")
        return self

    def _wait_ready(self, deadline: float) -> bool:
        """Read stdout until the READY line, the child's exit or the deadline."""
        assert self._proc is not None and self._proc.stdout is not None
        fd, seen = self._proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"READY" not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(min(left, 0.5)):
                    if left <= 0 or self._proc.poll() is not None:
                        return False
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: the child exited
                    return False
                seen += chunk
        return True

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to clients."""
        self._end(signal.SIGKILL, grace=0.0)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
        self._end(signal.SIGTERM, grace=grace)

    def restart(self, timeout: float = 15.0) -> RtspServer:
        """Stop and start again on the same port (the server binds with SO_REUSEADDR)."""
        self.stop()
        return self.start(timeout)

    def _end(self, sig: int, grace: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(sig)
                if sig != signal.SIGKILL:
                    proc.send_signal(signal.SIGCONT)  # a SIGSTOPped (frozen) server must wake to exit
                try:
                    proc.wait(timeout=grace if grace > 0 else 5.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5.0)  # reaped: no zombie
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def moving_frames(count: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """`count` RGB frames: a square moving over a gradient, the frame number written in."""
    return [moving_frame(i, width, height) for i in range(count)]


def moving_frame(index: int, width: int = 320, height: int = 240) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = np.linspace(40, 120, width, dtype=np.uint8)[None, :, None]
    side = max(8, min(width, height) // 5)
    x = (index * 7) % max(1, width - side)
    y = (index * 3) % max(1, height - side)
    image[y:y + side, x:x + side] = (230, 60, 30)
    cv2.putText(image, str(index), (8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    return image


def _encode(container: av.container.OutputContainer, images: Iterable[np.ndarray], fps: int,
            gop: int) -> None:
    stream = None
    for index, image in enumerate(images):
        if stream is None:
            stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
            stream.height, stream.width = image.shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = stream.time_base = Fraction(1, fps)
            stream.codec_context.gop_size = gop  # a keyframe where each HLS segment may start
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = index, Fraction(1, fps)
        container.mux(stream.encode(frame))
    if stream is None:
        raise ValueError("no images to encode")
    container.mux(stream.encode())


def write_mp4(path: Path, images: Sequence[np.ndarray], fps: int, faststart: bool = False) -> Path:
    """An H.264 (yuv420p) MP4 of RGB `images`; with `faststart` the moov atom comes first."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        _encode(container, images, fps, gop=fps)
    return Path(path)


def write_hls(folder: Path, images: Sequence[np.ndarray], fps: int, segment_seconds: int = 1) -> Path:
    """A VOD HLS rendition (index.m3u8 + seg000.ts, ...) in `folder`; returns the playlist."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    playlist = folder / "index.m3u8"
    options = {
        "hls_time": str(segment_seconds),
        "hls_list_size": "0",            # keep every segment in the playlist
        "hls_playlist_type": "vod",      # #EXT-X-ENDLIST: the client reads to the end and stops
        "hls_segment_filename": str(folder / "seg%03d.ts"),
    }
    with av.open(str(playlist), "w", format="hls", options=options) as container:
        _encode(container, images, fps, gop=fps * segment_seconds)
    return playlist
