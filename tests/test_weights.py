"""Weight resolution and downloads, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from segengine.download import download
from segengine.errors import DownloadError, ModelError
from segengine.models import zoo

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "good"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<html>proxy error</html>" if self.path == "/wrong" else PAYLOAD
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/stall":
            self.wfile.write(body[:1000])
            self.wfile.flush()
            time.sleep(3)  # never sends the rest within the client's timeout
            return
        if self.path != "/missing":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on purpose

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_writes_checked_file(server: str, tmp_path: Path) -> None:
    dest = download(f"{server}/good", tmp_path / "w.bin", sha256=SHA, size_bytes=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # no temporary file left behind


def test_wrong_bytes_are_refused_and_not_kept(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="sha256"):
        download(f"{server}/wrong", tmp_path / "w.bin", sha256=SHA, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_fails_within_timeout(server: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="stalled"):
        download(f"{server}/stall", tmp_path / "w.bin", sha256=SHA, timeout=0.5, progress=False)
    assert time.monotonic() - start < 4
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_oversize_and_bad_scheme(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        download(f"{server}/missing", tmp_path / "w.bin", sha256=SHA, progress=False)
    with pytest.raises(DownloadError, match="expected 10"):
        download(f"{server}/good", tmp_path / "w.bin", sha256=SHA, size_bytes=10, progress=False)
    with pytest.raises(DownloadError, match="only http"):
        download("file:///etc/passwd", tmp_path / "w.bin", sha256=SHA, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_no_network_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="SEGENGINE_MODEL_DIR"):
        download("http://127.0.0.1:9/x", tmp_path / "w.bin", sha256=SHA, progress=False)


def _fake_card(monkeypatch: pytest.MonkeyPatch, url: str) -> str:
    card = dataclasses.replace(zoo.card("twinlitenet"), url=url, sha256=SHA, size_bytes=len(PAYLOAD),
                               filename="fake.bin")
    monkeypatch.setattr(zoo, "card", lambda name: card)
    return card.name


def test_resolution_order(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _fake_card(monkeypatch, f"{server}/good")
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    mirror.mkdir()
    dirs = zoo.WeightDirs(cache=cache, mirror=mirror)
    # Nothing local: downloaded into the cache.
    assert zoo.resolve_weights(name, dirs=dirs, progress=False) == cache / "fake.bin"
    # The cache wins over the mirror; an explicit path wins over both.
    (mirror / "fake.bin").write_bytes(PAYLOAD)
    assert zoo.resolve_weights(name, dirs=dirs) == cache / "fake.bin"
    (cache / "fake.bin").unlink()
    assert zoo.resolve_weights(name, dirs=dirs) == mirror / "fake.bin"
    explicit = tmp_path / "mine.bin"
    explicit.write_bytes(b"x")
    assert zoo.resolve_weights(name, path=explicit, dirs=dirs) == explicit


def test_corrupt_mirror_file_and_missing_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _fake_card(monkeypatch, "http://127.0.0.1:9/unused")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "fake.bin").write_bytes(PAYLOAD[:1000])
    with pytest.raises(ModelError, match=r"fake\.bin: sha256 .* does not match"):
        zoo.resolve_weights(name, dirs=zoo.WeightDirs(cache=tmp_path / "c", mirror=mirror))
    with pytest.raises(ModelError, match="does not exist"):
        zoo.resolve_weights(name, dirs=zoo.WeightDirs(cache=tmp_path / "c", mirror=tmp_path / "nope"))
    with pytest.raises(ModelError, match="models fetch"):
        zoo.resolve_weights(name, dirs=zoo.WeightDirs(cache=tmp_path / "c"), allow_download=False)


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGENGINE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("SEGENGINE_MODEL_DIR", str(tmp_path / "m"))
    dirs = zoo.WeightDirs.from_env()
    assert dirs == zoo.WeightDirs(cache=tmp_path / "c" / "models", mirror=tmp_path / "m")
    assert zoo.WeightDirs.from_env(tmp_path / "x").mirror == tmp_path / "x"
