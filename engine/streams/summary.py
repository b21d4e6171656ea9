"""The run summary of many streams: one row per stream (frames, fps, dropped, reconnects, latency) and a total."""

from __future__ import annotations

import math
from collections.abc import Mapping

from segengine.stats import Histogram
from segengine.streams.stream import Stream

_HEAD = ("stream", "state", "frames", "fps", "dropped", "reconnects", "p50 ms", "p99 ms")


def _ms(hist: Histogram | None, q: float) -> str:
    value = hist.percentile(q) if hist is not None else float("nan")
    return "-" if math.isnan(value) else f"{value * 1e3:.0f}"


def _merged(hists: list[Histogram]) -> Histogram:
    total = Histogram()
    for h in hists:
        total.counts += h.counts
        total.n += h.n
    return total


def rows(streams: Mapping[str, Stream], wall: float,
         unopened: Mapping[str, str] | None = None) -> list[tuple[str, ...]]:
    """The table's rows, header first; fps per stream over its own steady state, the total's over ``wall``;
    ``unopened``: streams whose source never opened (why), a row each."""
    unopened = unopened or {}
    out = [_HEAD]
    latencies = []
    frames = dropped = reconnects = 0
    for sid, stream in streams.items():
        stats, status = stream.stats, stream.stats.source
        latency = stats.stages.get("latency")
        if latency is not None:
            latencies.append(latency)
        fps = stats.fps
        out.append((sid, stream.state, str(stats.frames), "-" if math.isnan(fps) else f"{fps:.1f}",
                    str(status.dropped), str(status.reconnects), _ms(latency, 50), _ms(latency, 99)))
        frames, dropped, reconnects = frames + stats.frames, dropped + status.dropped, reconnects + status.reconnects
    out.extend((sid, "failed", "0", "-", "0", "0", "-", "-") for sid in unopened)
    total_fps = f"{frames / wall:.1f}" if wall > 0 else "-"
    merged = _merged(latencies) if latencies else None
    out.append(("total", f"{len(streams) + len(unopened)} streams", str(frames), total_fps, str(dropped),
                str(reconnects), _ms(merged, 50), _ms(merged, 99)))
    return out


def table(streams: Mapping[str, Stream], wall: float, unopened: Mapping[str, str] | None = None) -> str:
    body = rows(streams, wall, unopened)
    widths = [max(len(r[i]) for r in body) for i in range(len(_HEAD))]
    lines = []
    for row in body:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [v.rjust(w) for v, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
