"""Many streams through one engine, with the real models: `segengine run A B C` equal to three single runs,
and files beside live RTSP feeds from the local test server (one killed and restarted mid-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from segengine.capture.base import SourceOptions
from segengine.models import zoo
from segengine.streams.pipeline import MultiPipeline
from segengine.streams.stream import StreamOptions
from tests.live_servers import RtspServer, moving_frames, rtsp_unavailable, write_mp4

VIDEO = "data/videos/udacity_lanelines_solidWhiteRight.mp4"
COMPARED = ("frame", "pts", "size", "inferred", "layers")  # all but the stream id, timings and health


@pytest.fixture(scope="module")
def env(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "SEGENGINE_CACHE_DIR": str(cache), "SEGENGINE_MODEL_DIR": str(shared / "models")}


def _clip(source: Path, target: Path, start: int, count: int) -> Path:
    """``count`` frames of ``source`` from ``start``, re-encoded (a short file of the real road)."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 960, 540, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i >= start + count:
                break
            if i >= start:
                out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return target


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segengine.cli", "run", *args], capture_output=True, text=True,
                          env=env, timeout=900)


def _lines(path: Path) -> list[dict]:
    return [{k: d[k] for k in COMPARED} for d in map(json.loads, path.read_text().splitlines())]


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_three_files_at_once_equal_three_single_runs(shared: Path, env: dict[str, str], tmp_path: Path) -> None:
    clips = [_clip(shared / VIDEO, tmp_path / f"{name}.mp4", start, n)
             for name, start, n in (("a", 0, 6), ("b", 60, 8), ("c", 120, 7))]
    out = tmp_path / "out"
    out.mkdir()
    many = _cli(*map(str, clips), "-o", str(out / "{stream}.mp4"), "--json", str(out / "{stream}.jsonl"),
                "--backend", "onnxruntime", "--max-batch", "4", env=env)
    assert many.returncode == 0, many.stderr[-3000:]
    table = many.stderr.splitlines()[-4:]
    assert [row.split()[:3] for row in table] == [["a", "ended", "6"], ["b", "ended", "8"], ["c", "ended", "7"],
                                                  ["total", "3", "streams"]]
    for clip, count in zip(clips, (6, 8, 7)):
        single = tmp_path / f"single-{clip.stem}.jsonl"
        one = _cli(str(clip), "--json", str(single), "--backend", "onnxruntime", "-q", env=env)
        assert one.returncode == 0, one.stderr[-3000:]
        batched = out / f"{clip.stem}.jsonl"
        assert {json.loads(line)["stream"] for line in batched.read_text().splitlines()} == {clip.stem}
        assert _lines(batched) == _lines(single)  # instances, track ids, lanes, maps: batching changed nothing
        assert len(_lines(batched)) == count and _frames(out / f"{clip.stem}.mp4") == count


@pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))
def test_a_file_beside_two_rtsp_feeds_one_restarted_the_others_unaffected(env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    dirs = zoo.WeightDirs(cache=Path(env["SEGENGINE_CACHE_DIR"]) / "models", mirror=Path(env["SEGENGINE_MODEL_DIR"]))
    video = write_mp4(tmp_path / "file.mp4", moving_frames(40), fps=25)
    live = SourceOptions(open_timeout=5.0, read_timeout=2.0, stall=3.0)
    with RtspServer(fps=10) as cam_a, RtspServer(fps=10, user="cam", password="Pa55-w0rd-xyz") as cam_b:
        with MultiPipeline(backend="onnxruntime", max_batch=4, dirs=dirs, render=False, linger=True) as p:
            p.add_source(cam_a.url, stream_id="a", source_options=live)
            b = p.add_source(cam_b.url, source_options=live)
            assert "Pa55" not in b and b == f"127.0.0.1-{cam_b.port}-x"
            counts = {"a": 0, b: 0, "file": 0}

            def until(done, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                for result in p:
                    counts[result.frame.stream] += 1
                    if done():
                        return
                    assert time.monotonic() < deadline, f"timed out with {counts}"

            until(lambda: counts["a"] >= 5 and counts[b] >= 5, timeout=240)  # the first run exports the graph
            p.add_source(str(video), stream_id="file", options=StreamOptions(policy="lossless"))
            cam_a.kill()
            b_before = counts[b]
            until(lambda: counts[b] >= b_before + 15, timeout=30)  # b goes on while a is down
            restart = threading.Thread(target=cam_a.restart)  # the results keep being taken meanwhile
            restart.start()
            until(lambda: not restart.is_alive(), timeout=30)
            a_before = counts["a"]
            until(lambda: counts["a"] >= a_before + 5 and p.streams["file"].done.is_set(), timeout=60)
            removed = p.remove_source(b)
            assert removed.state == "removed"
            streams = p.streams
    assert streams["a"].status.reconnects >= 1 and streams["a"].error is None
    assert streams["file"].state == "ended" and streams["file"].stats.frames == 40  # lossless beside live feeds
    stages = streams["a"].stats.stages
    # A live frame waits for at most the batch in flight, then its own; never for the file's queue.
    assert stages["latency"].percentile(50) < 2.5 * stages["infer"].percentile(50) + 0.2
