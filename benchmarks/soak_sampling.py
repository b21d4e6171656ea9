"""The soak's sampling: the process's memory, descriptors, threads and CPU, and what the pipeline's
thread hands over between two samples (results and their latencies), one Sample every few seconds."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import numpy as np

from benchmarks.soak_trends import Sample


def cpu_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, all threads; the whole machine's busy CPU seconds, from /proc/stat)."""
    times = os.times()
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system (idle iowait) irq softirq steal
    return times.user + times.system, busy / os.sysconf("SC_CLK_TCK")


def process_stats() -> tuple[float, int, int]:
    """(RSS in MB, open file descriptors, OS threads) of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    fds = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself holds open
    with open("/proc/self/status") as status:
        threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    return rss, fds, threads


class Window:
    """What the pipeline's thread hands the sampler between two samples (under a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._pipe: list[float] = []
        self._results = self._unreadable = 0
        self.status = None  # the latest result's SourceStatus

    def add(self, latency_ms: float | None, pipe_latency_ms: float, status: object) -> None:
        with self._lock:
            self._results += 1
            self._pipe.append(pipe_latency_ms)
            if latency_ms is None:
                self._unreadable += 1
            else:
                self._latencies.append(latency_ms)
            self.status = status

    def take(self) -> tuple[int, int, list[float], list[float], object]:
        with self._lock:
            taken = self._results, self._unreadable, self._latencies, self._pipe, self.status
            self._results = self._unreadable = 0
            self._latencies, self._pipe = [], []
            return taken


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Sampler(threading.Thread):
    """Samples every ``every`` s from ``start``; at ``end`` takes the last sample and stops the pipeline."""

    def __init__(self, window: Window, every: float, start: float, end: float, on_sample, stop_pipeline) -> None:
        super().__init__(name="soak-sampler")
        self.window, self.every, self.start_time, self.end = window, every, start, end
        self.on_sample, self.stop_pipeline = on_sample, stop_pipeline
        self.samples: list[Sample] = []
        self._halt = threading.Event()
        self._last = start
        self._dropped = 0
        self._cpu = cpu_seconds()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        due = self.start_time + self.every
        while not self._halt.wait(max(0.0, min(due, self.end) - time.monotonic())):
            now = time.monotonic()
            self.sample(now)
            if now >= self.end - 1e-3:
                self.stop_pipeline()
                return
            due += self.every

    def sample(self, now: float) -> None:
        rss, fds, threads = process_stats()
        results, unreadable, latencies, pipe, status = self.window.take()
        cpu = cpu_seconds()
        ours, machine = cpu[0] - self._cpu[0], cpu[1] - self._cpu[1]
        self._cpu = cpu
        elapsed = max(now - self._last, 1e-9)
        self._last = now
        dropped = getattr(status, "dropped", self._dropped)
        sample = Sample(
            t=round(now - self.start_time, 3), wall=dt.datetime.now().isoformat(timespec="seconds"),
            rss=round(rss, 2), fds=fds, threads=threads, results=results, fps=round(results / elapsed, 3),
            latency_p50=_percentile(latencies, 50), latency_p95=_percentile(latencies, 95),
            latency_max=max(latencies) if latencies else float("nan"), unreadable=unreadable,
            pipe_latency_p50=_percentile(pipe, 50), dropped_per_s=round((dropped - self._dropped) / elapsed, 3),
            cpu_per_result=round(ours * 1e3 / results, 2) if results else float("nan"),
            others_cpu=round(max(0.0, machine - ours) / elapsed, 3),
            frames_read=getattr(status, "frames", 0), dropped=dropped,
            reconnects=getattr(status, "reconnects", 0), gaps=getattr(status, "gaps", 0))
        self._dropped = dropped
        self.samples.append(sample)
        self.on_sample(sample)
