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


def test_a_camera_that_comes_back_at_another_size_keeps_the_run_and_the_video_going(
        shared: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SEGENGINE_CACHE_DIR": str(tmp_path / "cache"),
           "SEGENGINE_MODEL_DIR": str(shared / "models"), "PYTHONUNBUFFERED": "1"}
    js, mp4 = tmp_path / "live.jsonl", tmp_path / "live.mp4"
    with RtspServer(width=320, height=240, fps=10) as server:
        proc = subprocess.Popen([sys.executable, "-m", "segengine.cli", "run", server.url, "--json", str(js),
                                 "-o", str(mp4), "--read-timeout", "2", "--open-timeout", "5", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            before = _wait_for_lines(js, 5, proc, timeout=240)
            server.kill()
            server.width, server.height = 480, 270  # 16:9 after 4:3
            time.sleep(1.0)
            server.restart()
            deadline = time.monotonic() + 240  # the graph for the new size is exported on the way
            while not any(line["size"] == [270, 480] for line in _lines(js)[len(before):]):
                assert proc.poll() is None, f"segengine exited: {proc.communicate()[1][-3000:]}"
                assert time.monotonic() < deadline, "no frame at the new size"
                time.sleep(0.5)
            _wait_for_lines(js, len(_lines(js)) + 3, proc, timeout=60)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    lines = [json.loads(line) for line in js.read_text().splitlines()]
    sizes = [line["size"] for line in lines]
    assert sizes[0] == [240, 320] and sizes[-1] == [270, 480]  # JSONL records each frame's own size
    assert stderr.count("scaled to 320x180 on black bars") == 1, stderr[-3000:]  # said once, not per frame
    with av.open(str(mp4)) as container:  # one video, its first size kept throughout
        frames = list(container.decode(video=0))
    assert len(frames) == len(lines) and {(f.width, f.height) for f in frames} == {(320, 240)}
    # 480x270 scaled to 320x180: black bars of 30 rows above and below, the picture between
    boxed = [f.to_ndarray(format="rgb24") for f in frames[sizes.index([270, 480]):]]
    assert all(image[:28].max() < 40 and image[-28:].max() < 40 for image in boxed)
    assert max(image[32:-32].max() for image in boxed) > 100


def test_reconnects_given_up_exit_1_and_keep_what_was_written(shared: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SEGENGINE_CACHE_DIR": str(tmp_path / "cache"),
           "SEGENGINE_MODEL_DIR": str(shared / "models"), "PYTHONUNBUFFERED": "1"}
    js = tmp_path / "live.jsonl"
    with RtspServer(fps=10) as server:
        proc = subprocess.Popen([sys.executable, "-m", "segengine.cli", "run", server.url, "--json", str(js),
                                 "--read-timeout", "1", "--open-timeout", "2", "--reconnect", "1", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            written = _wait_for_lines(js, 3, proc, timeout=240)
            server.kill()
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1, stderr[-3000:]  # a failure while running, not bad usage (2)
    assert "gave up after 1 reconnection attempts" in stderr and "Traceback" not in stderr
    kept = partial_of(js)
    assert not js.exists() and kept is not None and f"kept what was written in {kept}" in stderr
    assert len(kept.read_text().splitlines()) >= len(written)
