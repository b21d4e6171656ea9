"""Run statistics in constant memory: per-stage latency percentiles from a log-spaced histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from segengine.types import SourceStatus

_LOW, _HIGH, _STEP = 1e-5, 1e3, 1.01  # 10 µs .. 1000 s in 1 % steps
_BINS = int(math.log(_HIGH / _LOW) / math.log(_STEP)) + 2


class Histogram:
    """Percentiles to within 1 % of the value, whatever the number of samples."""

    def __init__(self) -> None:
        self.counts = np.zeros(_BINS, np.int64)
        self.n = 0

    def add(self, seconds: float) -> None:
        b = 0 if seconds <= _LOW else min(_BINS - 1, int(math.log(seconds / _LOW) / math.log(_STEP)) + 1)
        self.counts[b] += 1
        self.n += 1

    def percentile(self, q: float) -> float:
        if not self.n:
            return float("nan")
        b = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q / 100 * self.n)))
        return _LOW * _STEP ** max(b - 0.5, 0)


@dataclass
class RunStats:
    frames: int = 0
    inferred: int = 0  # frames the networks ran on (the others were carried: --interval)
    started: float = 0.0  # the pipeline started (graph loading included)
    first: float = 0.0  # the first result was done
    finished: float = 0.0
    source: SourceStatus = field(default_factory=SourceStatus)  # the source's health at the end
    stages: dict[str, Histogram] = field(default_factory=dict)

    def add(self, timings: dict[str, float], done: float, inferred: bool = True) -> None:
        self.frames += 1
        self.inferred += inferred
        self.first = self.first or done
        self.finished = done
        for stage, seconds in timings.items():
            self.stages.setdefault(stage, Histogram()).add(seconds)

    @property
    def dropped(self) -> int:
        return self.source.dropped

    @property
    def fps(self) -> float:
        """Steady-state throughput: frames after the first over the time they took."""
        elapsed = self.finished - self.first
        return (self.frames - 1) / elapsed if elapsed > 0 else float("nan")

    def table(self) -> str:
        lines = [f"frames {self.frames}  dropped {self.dropped}  start-up {self.first - self.started:.1f} s  "
                 f"then {self.finished - self.first:.1f} s  throughput {self.fps:.2f} fps"
                 + (f"  networks on {self.inferred} of them" if self.inferred < self.frames else ""),
                 f"source {self.source.line()}",
                 f"{'stage':<10} {'p50 ms':>8} {'p99 ms':>8}"]
        for stage, hist in self.stages.items():
            lines.append(f"{stage:<10} {hist.percentile(50) * 1e3:8.1f} {hist.percentile(99) * 1e3:8.1f}")
        return "\n".join(lines)
