"""`segengine run` on a live RTSP feed: it keeps producing output across a server restart, and
the credentials in the URL reach no log line, message or output file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from segengine.sinks.staging import partial_of
from tests.live_servers import RtspServer, rtsp_unavailable

pytestmark = pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))
PASSWORD = "Pa55-w0rd-xyz"


def _lines(target: Path) -> list[dict]:
    path = partial_of(target)  # written beside the target until the run ends
    if path is None:
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen[str], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(lines := _lines(path)) < count:
        assert proc.poll() is None, f"segengine exited early: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"only {len(lines)} of {count} JSON lines in {timeout} s"
        time.sleep(0.2)
    return lines


def test_run_on_rtsp_survives_a_server_restart_and_never_shows_the_password(
        shared: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SEGENGINE_CACHE_DIR": str(tmp_path / "cache"),
           "SEGENGINE_MODEL_DIR": str(shared / "models"), "PYTHONUNBUFFERED": "1"}
    js, mp4 = tmp_path / "live.jsonl", tmp_path / "live.mp4"
    with RtspServer(user="cam", password=PASSWORD, fps=10) as server:
        proc = subprocess.Popen([sys.executable, "-m", "segengine.cli", "run", server.url, "--json", str(js),
                                 "-o", str(mp4), "-v", "--read-timeout", "2", "--open-timeout", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            before = _wait_for_lines(js, 5, proc, timeout=240)  # the first run exports the graph (~20 s)
            server.kill()
            time.sleep(2.0)
            server.restart()
            after = _wait_for_lines(js, len(before) + 8, proc, timeout=60)
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)  # every thread's stack, for the failure message
                time.sleep(1.0)
                proc.kill()
                raise AssertionError(f"no exit 30 s after SIGINT:\n{proc.communicate()[1][-6000:]}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert partial_of(js) is None  # a stop by signal is a finished run: renamed onto the target
    lines = [json.loads(line) for line in js.read_text().splitlines()]
    assert lines[-1]["source"]["reconnects"] >= 1 and lines[-1]["source"]["gaps"] >= 1
    pts = [line["pts"] for line in lines]
    assert all(b > a for a, b in zip(pts, pts[1:]))  # one timeline across the restart
    assert len(after) > len(before)
    assert "reconnected" in stderr and "rtsp://***@127.0.0.1" in stderr
    with av.open(str(mp4)) as container:  # finalised on SIGINT: plays, with every frame written
        assert sum(1 for _ in container.decode(video=0)) == len(lines)
    for text in (stderr, js.read_text(errors="replace"), mp4.read_bytes().decode("latin-1")):
        assert PASSWORD not in text and "cam:" not in text
