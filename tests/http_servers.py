"""HTTP and TCP servers on 127.0.0.1 for live-source tests: files (with Range), a live MJPEG
feed, a stall, a drop, and a port that accepts and never answers.

Every server is a context manager that stops itself; every wait here is bounded in time.
"""



from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import cv2

from tests.live_servers import HOST, free_port, moving_frame


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive for files, as FFmpeg's HLS reader expects
    timeout = 30  # an idle keep-alive connection's handler ends after this (and at stop())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet tests
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._closed(self)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        owner._count(parts.path)
        try:
            if parts.path == "/mjpeg":
                return owner._mjpeg(self, int(query.get("frames", 0)))
            for prefix in ("/stall/", "/drop/"):
                if parts.path.startswith(prefix):
                    file = owner._file(parts.path[len(prefix) - 1:])
                    if file is None:
                        return self.send_error(404)
                    if prefix == "/stall/":
                        return owner._stall(self, file, int(query.get("after", owner.stall_after)),
                                            float(query.get("for", owner.stall_for)))
                    return owner._drop(self, file, int(query.get("after", owner.drop_after)))
            file = owner._file(parts.path)
            if file is None:
                return self.send_error(404)
            owner._static(self, file, head)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True  # the client went, or stop() shut the socket


class _Server(ThreadingHTTPServer):
    daemon_threads = True        # never keep the interpreter alive
    allow_reuse_address = True   # restart on the same port at once
    owner: HttpServer


class HttpServer:
    """Files from `root` plus live and broken endpoints, on http://127.0.0.1:PORT.

    /<file>         the file (Range requests answered with 206)
    /mjpeg          endless multipart/x-mixed-replace JPEGs at `mjpeg_fps` (?frames=N ends after N)
    /stall/<file>   the first `stall_after` bytes (?after=N), then silence for `stall_for` s (?for=S), then close
    /drop/<file>    the first `drop_after` bytes (?after=N), then a TCP reset
    `hits(path)` counts requests per path, `connections` counts accepted connections.
    """

    def __init__(self, root: Path, port: int | None = None, mjpeg_fps: int = 15,
                 mjpeg_size: tuple[int, int] = (320, 240), stall_after: int = 2048,
                 stall_for: float = 30.0, drop_after: int = 2048, max_stream_seconds: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.port = port if port is not None else free_port()
        self.mjpeg_fps, self.mjpeg_size = mjpeg_fps, mjpeg_size
        self.stall_after, self.stall_for, self.drop_after = stall_after, stall_for, drop_after
        self.max_stream_seconds = max_stream_seconds  # bounds /mjpeg and /stall even if nobody stops us
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._connections = 0
        self._active: dict[_Handler, threading.Thread] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}/{path.lstrip('/')}"

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits["/" + path.lstrip("/")]

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def wait_for_hits(self, path: str, count: int, timeout: float = 10.0) -> bool:
        """True once `path` was requested `count` times, False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.hits(path) < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def start(self) -> HttpServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((HOST, self.port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, end the live endpoints, shut every open connection, join (bounded)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # returns within poll_interval
        server.server_close()
        with self._lock:
            active = list(self._active.items())
        for handler, _ in active:
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked on recv/send
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- called from handler threads ---

    def _opened(self, handler: _Handler) -> None:
        with self._lock:
            self._connections += 1
            self._active[handler] = threading.current_thread()

    def _closed(self, handler: _Handler) -> None:
        with self._lock:
            self._active.pop(handler, None)

    def _count(self, path: str) -> None:
        with self._lock:
            self._hits[path] += 1

    def _file(self, url_path: str) -> Path | None:
        """The file under root for a URL path; None if missing or outside root."""
        candidate = (self.root / url_path.lstrip("/")).resolve()
        if candidate.is_file() and candidate.is_relative_to(self.root):
            return candidate
        return None

    def _static(self, h: _Handler, file: Path, head: bool) -> None:
        data = file.read_bytes()
        start, end = 0, len(data) - 1
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].split(",")[0].strip().partition("-")
            try:
                start = int(first) if first else max(0, len(data) - int(last))
                end = min(end, int(last)) if first and last else end
            except ValueError:
                start, end = 0, len(data) - 1
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.send_header("Connection", "close")
                h.close_connection = True
                h.end_headers()
                return
        h.send_response(206 if ranged.startswith("bytes=") else 200)
        h.send_header("Content-Type", _content_type(file))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(end - start + 1))
        if h.close_connection:
            # The client asked for Connection: close (FFmpeg's http does, outside HLS). Say we close
            # too, or FFmpeg takes the connection as reusable, sends its seek on it and races our close.
            h.send_header("Connection", "close")
        if ranged.startswith("bytes="):
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.end_headers()
        if not head:
            h.wfile.write(data[start:end + 1])

    def _mjpeg(self, h: _Handler, frames: int) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Connection", "close")
        h.end_headers()
        width, height = self.mjpeg_size
        started, index = time.monotonic(), 0
        while not self._stopping.is_set() and (frames <= 0 or index < frames):
            if time.monotonic() - started > self.max_stream_seconds:
                break
            rgb = moving_frame(index, width, height)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert ok
            h.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                          + f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg.tobytes() + b"\r\n")
            h.wfile.flush()
            index += 1
            # Paced on the start time, not per frame, so the rate does not drift.
            self._stopping.wait(max(0.0, started + index / self.mjpeg_fps - time.monotonic()))
        if not self._stopping.is_set():
            h.wfile.write(b"--frame--\r\n")  # the closing delimiter: a clean end of the multipart body

    def _stall(self, h: _Handler, file: Path, after: int, stall_for: float) -> None:
        data = file.read_bytes()
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", _content_type(file))
        h.send_header("Content-Length", str(len(data)))  # promises the whole file
        h.end_headers()
        h.wfile.write(data[:after])
        h.wfile.flush()
        self._stopping.wait(min(stall_for, self.max_stream_seconds))

    def _drop(self, h: _Handler, file: Path, after: int) -> None:
        data = file.read_bytes()
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", _content_type(file))
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:after])
        h.wfile.flush()
        # SO_LINGER 0: close() sends RST, as when a server process dies mid-response.
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()


def _content_type(file: Path) -> str:
    return {".mp4": "video/mp4", ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t",
            ".jpg": "image/jpeg"}.get(file.suffix, "application/octet-stream")


class SilentTcpServer:
    """Accepts TCP connections on 127.0.0.1 and never answers; holds them until stop()."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self._lock = threading.Lock()
        self._accepts = 0
        self._clients: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def accepts(self) -> int:
        with self._lock:
            return self._accepts

    def start(self) -> SilentTcpServer:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(16)
        listener.settimeout(0.1)  # the accept loop checks for stop() ten times a second
        self._listener = listener
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name=f"silent-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._accepts += 1
                self._clients.append(client)

    def stop(self, timeout: float = 2.0) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        listener.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> SilentTcpServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
