"""benchmarks/soak.py: its trend detector, the clock code it reads latency from, and (integration)
a short real run on the local RTSP server with the real weights."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from benchmarks.soak_trends import Sample, curve_table, detect_trend, judge, theil_sen, verdict
from segengine.models import zoo
from tests import clock_code
from tests.live_servers import moving_frame, rtsp_unavailable

REPO = Path(__file__).resolve().parents[1]
SOAK = REPO / "benchmarks" / "soak.py"
T = np.arange(0.0, 1800.0, 5.0)  # 30 minutes, a sample every 5 s
RSS = {"rel": 0.05, "floor": 32.0}  # the soak's own thresholds for rss (MB)


# -- the trend detector ------------------------------------------------------------------------


def test_a_clear_upward_trend_is_flagged_with_its_slope() -> None:
    rng = np.random.default_rng(0)
    y = 800 + 0.05 * T + rng.normal(0, 3, T.size)  # a leak of 3 MB a minute
    trend = detect_trend(T, y, warmup=120, **RSS)
    assert trend.judged and trend.flagged
    assert trend.slope_per_min == pytest.approx(3.0, rel=0.05)
    assert trend.start < 820 and trend.end > 880 and trend.rise > trend.threshold


def test_a_flat_noisy_series_with_spikes_is_not_flagged() -> None:
    rng = np.random.default_rng(1)
    y = 800 + rng.normal(0, 10, T.size)
    y[rng.choice(T.size, 12, replace=False)] += 300  # a few big spikes (a GC pause, a burst)
    y[-3:] += 300  # even right at the end, where they would tilt a least-squares line
    trend = detect_trend(T, y, warmup=120, **RSS)
    assert trend.judged and not trend.flagged
    assert abs(trend.slope_per_min) < 0.2


def test_a_warmup_spike_is_not_flagged() -> None:
    rng = np.random.default_rng(2)
    latency = 150 + rng.normal(0, 15, T.size)
    latency[T < 60] = 2000  # the first frames wait for the graph and the queues to settle
    rss = 800 + rng.normal(0, 2, T.size)
    rss[T < 100] = np.linspace(300, 800, int((T < 100).sum()))  # memory ramps up, then stays
    assert not detect_trend(T, latency, warmup=120, rel=0.2, floor=25).flagged
    assert not detect_trend(T, rss, warmup=120, **RSS).flagged
    # Without a warm-up the spike would count: the detector sees it as the decline it is, not a rise.
    assert not detect_trend(T, latency, warmup=0, rel=0.2, floor=25).flagged


def test_direction_floor_and_noise_are_respected() -> None:
    rng = np.random.default_rng(3)
    fps = 15 - 0.002 * T + rng.normal(0, 0.3, T.size)  # throughput falling by 3.6 fps
    assert detect_trend(T, fps, warmup=120, rel=0.1, floor=0.5, worse="down").flagged
    assert not detect_trend(T, fps, warmup=120, rel=0.1, floor=0.5, worse="up").flagged
    fds = np.where(T > 900, 13.0, 12.0)  # one more file descriptor, once: under the floor of 4
    assert not detect_trend(T, fds, warmup=120, rel=0.1, floor=4).flagged
    # A rise above rel and floor, but buried in noise over a few samples, is not a trend.
    t, y = np.arange(10.0), np.array([100, 160, 90, 150, 95, 170, 100, 140, 110, 175.0])
    trend = detect_trend(t, y, warmup=0, rel=0.05, floor=1)
    assert trend.rise > max(0.05 * np.median(y), 1) and not trend.flagged


def test_too_few_samples_or_nan_values_are_not_judged() -> None:
    trend = detect_trend([0, 5, 10, 15], [1, 2, 3, 4], warmup=0, rel=0, floor=0)
    assert not trend.judged and not trend.flagged and "4 samples" in trend.note
    y = 800 + 0.05 * T
    y[::2] = np.nan  # windows without a latency
    assert detect_trend(T, y, warmup=120, **RSS).flagged
    with pytest.raises(ValueError, match="worse"):
        detect_trend(T, y, warmup=0, rel=0, floor=0, worse="sideways")


def test_theil_sen_ignores_outliers_and_thins_long_series() -> None:
    t = np.arange(5000.0)
    y = 2.0 * t
    y[::50] = -1e6
    assert theil_sen(t, y) == pytest.approx(2.0)


def _samples(rss: np.ndarray, busy: np.ndarray | None = None) -> list[Sample]:
    return [Sample(t=float(t), wall="", rss=float(r), fds=12, threads=16, results=75, fps=15.0, latency_p50=150.0,
                   latency_p95=180.0, latency_max=200.0, unreadable=0, pipe_latency_p50=90.0, dropped_per_s=0.0,
                   cpu_per_result=120.0, others_cpu=others, frames_read=75 * i, dropped=0, reconnects=0, gaps=0)
            for i, (t, r, others) in enumerate(zip(T, rss, busy if busy is not None else np.zeros(T.size)))]


def test_the_verdict_names_the_metric_its_levels_and_slope() -> None:
    samples = _samples(800 + 0.05 * T)
    code, lines = verdict(judge(samples, 120), 120)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("FAIL: rss trends up: 810.0 -> 885.8 MB over 27.9 min") and "+3.000 MB/min" in lines[0]
    assert "busier" not in lines[0]  # memory is not what a neighbour's load moves
    table = curve_table(samples, judge(samples, 120))
    assert "TRENDS UP" in table and table.count("flat") == 5  # fds, threads, latency_p50, fps, cpu_per_result
    slower = [replace(s, fps=15 - 0.003 * s.t) for s in _samples(np.full(T.size, 800.0), busy=0.2 + T / 1800)]
    code, lines = verdict(judge(slower, 120), 120)  # fps falls while the neighbours take a core more
    assert code == 1 and lines[0].startswith("FAIL: fps trends down") and "the machine got busier" in lines[0]
    code, lines = verdict(judge(_samples(np.full(T.size, 800.0)), 120), 120)
    assert code == 0 and lines[0].startswith("PASS:")
    code, lines = verdict(judge(_samples(np.full(T.size, 800.0))[:30], 120), 120)  # 2.5 min: 6 samples left
    assert code == 0
    code, lines = verdict(judge(_samples(np.full(T.size, 800.0))[:28], 120), 120)
    assert code == 3 and lines[0].startswith("NO VERDICT")


# -- the clock code ----------------------------------------------------------------------------


def _i420(width: int, height: int, ms: int, index: int) -> bytearray:
    """A moving test picture (the live tests' own) as I420, with ``ms`` burned in."""
    rgb = av.VideoFrame.from_ndarray(moving_frame(index, width, height), format="rgb24")
    frame = bytearray(rgb.reformat(format="yuv420p").to_ndarray().tobytes())
    clock_code.burn_i420(frame, width, height, ms)
    return frame


@pytest.mark.parametrize("size", [(320, 240), (960, 540), (100, 60)])
def test_the_clock_code_survives_h264_at_a_low_bitrate(size: tuple[int, int], tmp_path: Path) -> None:
    width, height = size
    stamps = [1_760_000_000_000 + 37 * i for i in range(12)]
    path = tmp_path / "clock.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=15, options={"preset": "ultrafast", "tune": "zerolatency"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 200_000  # a quarter of what the test server streams
        for i, ms in enumerate(stamps):
            planes = np.frombuffer(bytes(_i420(width, height, ms, i)), np.uint8).reshape(height * 3 // 2, width)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 15)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with av.open(str(path)) as container:
        read = [clock_code.read_rgb(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert read == [ms % 2**32 for ms in stamps]


def test_a_damaged_or_missing_code_is_refused_not_guessed() -> None:
    width, height = 320, 240
    frame = _i420(width, height, 1_760_000_123_456, 0)
    planes = np.frombuffer(bytes(frame), np.uint8).reshape(height * 3 // 2, width)
    rgb = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")
    assert clock_code.read_rgb(rgb) == 1_760_000_123_456 % 2**32
    b = clock_code.block_size(width, height)
    flipped = rgb.copy()  # one bit and its twin swapped: contrast holds, the CRC does not
    flipped[:b, b:2 * b], flipped[b:2 * b, b:2 * b] = rgb[b:2 * b, b:2 * b], rgb[:b, b:2 * b]
    assert clock_code.read_rgb(flipped) is None
    smeared = rgb.copy()
    smeared[:2 * b, 3 * b:4 * b] = 128  # a bit and its twin smeared to grey by the encoder
    assert clock_code.read_rgb(smeared) is None
    assert clock_code.read_rgb(np.full((height, width, 3), 90, np.uint8)) is None
    with pytest.raises(ValueError, match="too small"):
        clock_code.block_size(80, 60)


def test_latency_is_put_back_next_to_the_receivers_clock() -> None:
    now = 1_760_000_000_000
    assert clock_code.latency_ms(now % 2**32, now) == 0
    assert clock_code.latency_ms((now - 250) % 2**32, now) == 250
    assert clock_code.latency_ms((now + 3) % 2**32, now) == -3
    wrapped = 2**32 * 410  # the code's counter wrapped between the server and the receiver
    assert clock_code.latency_ms((wrapped - 40) % 2**32, wrapped + 60) == 100
    assert clock_code.value_of(clock_code.bits_of(now)) == now % 2**32


# -- a real run --------------------------------------------------------------------------------


def _env(dirs: zoo.WeightDirs) -> dict[str, str]:
    # The session's cache: a graph another test exported for this size is reused.
    return {**os.environ, "SEGENGINE_CACHE_DIR": str(dirs.cache.parent), "SEGENGINE_MODEL_DIR": str(dirs.mirror),
            "PYTHONUNBUFFERED": "1"}


def _port_closed(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.integration
@pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))
def test_a_short_soak_samples_and_gives_a_verdict(dirs: zoo.WeightDirs, tmp_path: Path) -> None:
    out_json, out_csv = tmp_path / "soak.json", tmp_path / "soak.csv"
    done = subprocess.run([sys.executable, str(SOAK), "--minutes", "1", "--every", "3", "--warmup", "15",
                           "--out", str(out_json), "--out", str(out_csv)],
                          capture_output=True, text=True, env=_env(dirs), timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr[-4000:]  # 1: a trend on a busy machine
    assert "min" in done.stdout and "slope/min" in done.stdout
    assert any(line.startswith(("PASS:", "FAIL:")) for line in done.stdout.splitlines()), done.stdout
    doc = json.loads(out_json.read_text())
    samples = doc["samples"]
    assert len(samples) == 20 and samples[-1]["t"] == pytest.approx(60, abs=1)
    assert all(s["rss"] > 50 and s["fds"] > 3 and s["threads"] > 2 for s in samples)
    results = sum(s["results"] for s in samples)
    assert results > 30 and sum(s["unreadable"] for s in samples) <= results // 20  # the clock reads
    latencies = [s["latency_p50"] for s in samples if s["latency_p50"] is not None]
    assert len(latencies) >= 15 and all(0 < v < 10_000 for v in latencies)
    assert doc["exit_code"] == done.returncode and set(doc["trends"]) >= {"rss", "fds", "threads", "latency_p50"}
    assert out_csv.read_text().count("\n") == len(samples) + 1
    assert _port_closed(doc["config"]["url"])  # the server is gone


@pytest.mark.integration
@pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))
def test_ctrl_c_prints_what_was_sampled_and_stops_the_server(dirs: zoo.WeightDirs, tmp_path: Path) -> None:
    out_json = tmp_path / "soak.json"
    proc = subprocess.Popen([sys.executable, str(SOAK), "--minutes", "10", "--every", "1", "--progress-every", "1",
                             "--out", str(out_json)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(dirs))
    status: list[str] = []  # a status line a second once results flow
    reader = threading.Thread(target=lambda: status.extend(line for line in proc.stderr  # type: ignore[union-attr]
                                                            if re.match(r"soak: +[0-9.]+ min ", line)), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240  # the first run exports the graph
        while len(status) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(status) >= 4, f"{len(status)} status lines, exit code {proc.poll()}"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        # how the soak stood towards signals when it got this one (for the message, should it not stop)
        signals = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                   if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
        proc.send_signal(signal.SIGINT)
        stdout = proc.stdout.read()  # type: ignore[union-attr]  (until it exits and closes it)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, f"{signals}\n{stdout}"
    assert "interrupted by SIGINT" in stdout and "slope/min" in stdout
    assert len(json.loads(out_json.read_text())["samples"]) >= 4
    assert children and not any(Path(f"/proc/{pid}").exists() for pid in children)  # the server was stopped
