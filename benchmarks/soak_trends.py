"""The soak's judgement: a robust trend per metric (Theil-Sen slope against the scatter around it)
and the curve's figures as a table. benchmarks/soak.py samples; this decides "trends upward"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Trend:
    """One metric's verdict over the samples after the warm-up."""

    judged: bool  # False: too few samples after the warm-up (``note`` says how many)
    flagged: bool  # it moved the wrong way by more than ``threshold`` over the judged span
    samples: int
    slope: float  # units per second (Theil-Sen); NaN when not judged
    rise: float  # slope × span, signed so that positive is the bad direction
    threshold: float  # what ``rise`` had to exceed: max(rel × |median|, floor, sigmas × its standard error)
    start: float  # median of the first tenth of the judged samples (at least 3)
    end: float  # median of the last tenth
    span: float  # seconds from the first to the last judged sample
    note: str = ""

    @property
    def slope_per_min(self) -> float:
        return self.slope * 60.0


def theil_sen(t: np.ndarray, y: np.ndarray, max_points: int = 1000) -> float:
    """The median of the slopes between all pairs of points (thinned evenly to ``max_points``)."""
    if len(t) > max_points:
        keep = np.linspace(0, len(t) - 1, max_points).round().astype(int)
        t, y = t[keep], y[keep]
    i, j = np.triu_indices(len(t), 1)
    dt_ = t[j] - t[i]
    ok = dt_ > 0
    return float(np.median((y[j] - y[i])[ok] / dt_[ok]))


def detect_trend(t: Sequence[float], y: Sequence[float], *, warmup: float, rel: float, floor: float,
                 worse: str = "up", min_samples: int = 6, sigmas: float = 3.0) -> Trend:
    """Does ``y`` (sampled at seconds ``t``) trend the ``worse`` way ("up" or "down") after ``warmup``?

    Samples with t < ``warmup`` and NaN values are left out. Flagged when the Theil-Sen slope
    times the judged span, in the bad direction, exceeds ``rel`` × |median|, ``floor`` (in the
    metric's unit) and ``sigmas`` standard errors of that rise (noise: 1.4826 × the MAD of the
    residuals around the fitted line; the standard error is least squares' for that noise).
    """
    if worse not in ("up", "down"):
        raise ValueError(f"worse must be 'up' or 'down', got {worse!r}")
    tt, yy = np.asarray(t, np.float64), np.asarray(y, np.float64)
    if tt.shape != yy.shape:
        raise ValueError(f"t and y differ in length: {tt.shape} vs {yy.shape}")
    keep = np.isfinite(yy) & np.isfinite(tt) & (tt >= warmup)
    tt, yy = tt[keep], yy[keep]
    n = len(tt)
    if n < max(min_samples, 3) or tt[-1] <= tt[0]:
        nan = float("nan")
        return Trend(False, False, n, nan, nan, nan, nan, nan, 0.0,
                     f"{n} samples after the {warmup:.0f} s warm-up, {min_samples} needed")
    slope = theil_sen(tt, yy)
    residuals = yy - (float(np.median(yy - slope * tt)) + slope * tt)
    noise = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))
    span = float(tt[-1] - tt[0])
    standard_error = noise * span / (math.sqrt(n) * float(np.std(tt)))
    threshold = max(rel * abs(float(np.median(yy))), floor, sigmas * standard_error)
    rise = slope * span * (1.0 if worse == "up" else -1.0)
    k = max(3, n // 10)
    return Trend(True, rise > threshold, n, slope, rise, threshold, float(np.median(yy[:k])),
                 float(np.median(yy[-k:])), span)


# -- what is sampled -------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    worse: str | None  # "up"/"down": judged for a trend that way; None: reported only
    rel: float = 0.0
    floor: float = 0.0
    what: str = ""


METRICS = (
    Metric("rss", "MB", "up", 0.05, 32.0, "resident memory of this process"),
    Metric("fds", "", "up", 0.10, 4.0, "open file descriptors"),
    Metric("threads", "", "up", 0.10, 2.0, "OS threads of this process (native ones included)"),
    Metric("latency_p50", "ms", "up", 0.20, 25.0, "glass-to-glass latency, median over the window"),
    Metric("latency_p95", "ms", None, what="glass-to-glass latency, 95th percentile over the window"),
    Metric("pipe_latency_p50", "ms", None, what="the pipeline's own capture-to-result latency, median"),
    Metric("fps", "fps", "down", 0.10, 0.5, "results a second over the window"),
    Metric("cpu_per_result", "ms", "up", 0.15, 5.0, "CPU time of this process (all threads) per result: the "
           "engine's own cost, which a busier machine hardly changes"),
    Metric("dropped_per_s", "/s", None, what="frames the capture dropped a second (the latest-frame policy)"),
    Metric("others_cpu", "core", None, what="CPU used by every other process (the server included), in cores: "
           "a neighbour's load, which slows fps and latency without any fault of the engine"),
)


@dataclass
class Sample:
    t: float  # seconds since the first result
    wall: str  # ISO time of the sample
    rss: float
    fds: int
    threads: int
    results: int  # in this window
    fps: float
    latency_p50: float
    latency_p95: float
    latency_max: float
    unreadable: int  # results in this window whose clock code did not read
    pipe_latency_p50: float
    dropped_per_s: float
    cpu_per_result: float  # ms
    others_cpu: float  # cores
    frames_read: int  # cumulative, the source's counters
    dropped: int
    reconnects: int
    gaps: int




def judge(samples: Sequence[Sample], warmup: float) -> dict[str, Trend]:
    t = [s.t for s in samples]
    trends = {}
    for m in METRICS:
        y = [float(getattr(s, m.name)) for s in samples]
        trends[m.name] = detect_trend(t, y, warmup=warmup, rel=m.rel, floor=m.floor, worse=m.worse or "up")
    return trends


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def curve_table(samples: Sequence[Sample], trends: dict[str, Trend]) -> str:
    head = (f"{'metric':<17} {'unit':<4} {'min':>8} {'median':>8} {'max':>8} {'first':>8} {'last':>8} "
            f"{'slope/min':>10} {'rise':>8} {'allowed':>8}  verdict")
    lines = [head, "-" * len(head)]
    for m in METRICS:
        y = np.array([float(getattr(s, m.name)) for s in samples], np.float64)
        finite = y[np.isfinite(y)]
        tr = trends[m.name]
        stats = ([finite.min(), np.median(finite), finite.max()] if len(finite) else [math.nan] * 3)
        first = next((v for v in y if math.isfinite(v)), math.nan)
        last = next((v for v in y[::-1] if math.isfinite(v)), math.nan)
        if not tr.judged:
            verdict = "not judged: " + tr.note
        elif m.worse is None:
            verdict = "reported"
        else:
            verdict = ("TRENDS " + m.worse.upper()) if tr.flagged else "flat"
        allowed = fmt(tr.threshold) if tr.judged and m.worse else ""
        lines.append(f"{m.name:<17} {m.unit:<4} {fmt(stats[0]):>8} {fmt(stats[1]):>8} {fmt(stats[2]):>8} "
                     f"{fmt(first):>8} {fmt(last):>8} {fmt(tr.slope_per_min, 3):>10} "
                     f"{fmt(tr.rise) if m.worse else '':>8} {allowed:>8}  {verdict}")
    return "\n".join(lines)


def verdict(trends: dict[str, Trend], warmup: float) -> tuple[int, list[str]]:
    """(exit code, lines): 1 with one line per metric that trends, 3 when nothing could be judged, else 0."""
    judged = {m.name: trends[m.name] for m in METRICS if m.worse is not None}
    bad = [(m, trends[m.name]) for m in METRICS if m.worse is not None and trends[m.name].flagged]
    if bad:
        return 1, [_failure(m, tr, trends.get("others_cpu")) for m, tr in bad]
    if not all(tr.judged for tr in judged.values()):
        notes: dict[str, list[str]] = {}
        for name, tr in judged.items():
            if not tr.judged:
                notes.setdefault(tr.note, []).append(name)
        missing = "; ".join(f"{', '.join(names)}: {note}" for note, names in notes.items())
        return 3, [f"NO VERDICT: too few samples to judge ({missing}); run longer or sample more often (--every)"]
    span = max(tr.span for tr in judged.values()) / 60
    return 0, [f"PASS: no judged metric ({', '.join(judged)}) trends the wrong way over {span:.1f} min "
               f"after a {warmup / 60:.1f} min warm-up"]


LOAD_SENSITIVE = ("latency_p50", "fps", "cpu_per_result")  # what a neighbour's load moves too
BUSIER = 0.25  # cores: other processes' CPU rising this much over the run makes a load-sensitive trend suspect


def _failure(m: Metric, tr: Trend, others: Trend | None) -> str:
    unit = f" {m.unit}" if m.unit else ""
    line = (f"FAIL: {m.name} trends {m.worse}: {tr.start:.1f} -> {tr.end:.1f}{unit} over {tr.span / 60:.1f} min "
            f"after the warm-up, {tr.slope_per_min:+.3f}{unit}/min (a {'rise' if m.worse == 'up' else 'fall'} of "
            f"{tr.rise:.1f}{unit}; allowed {tr.threshold:.1f} = the most of {m.rel:.0%} of the median, "
            f"{m.floor:g}{unit} and 3 standard errors)")
    if m.name in LOAD_SENSITIVE and others is not None and others.judged and others.end - others.start > BUSIER:
        line += (f"; other processes' CPU rose {others.start:.2f} -> {others.end:.2f} cores meanwhile: the machine "
                 "got busier, rerun on a quiet one")
    return line
