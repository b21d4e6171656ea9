"""One stream's work after inference: layer stages (tracker, lane smoothing), the renderer, the sinks, statistics.

Stateful, so it runs on exactly one thread per stream, in frame order, and needs no locks. The
single-stream :class:`~segengine.pipeline.Pipeline` runs it on the caller's thread; the
multi-stream pipeline on each stream's own thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from segengine.layers.stages import LayerStages
from segengine.render.base import Renderer
from segengine.sinks.base import Sink, finish
from segengine.stats import RunStats
from segengine.tracking.base import Tracker
from segengine.types import FrameResult, SourceStatus


class PostStages:
    def __init__(self, *, tracker: Tracker | None = None, renderer: Renderer | None = None,
                 sinks: Sequence[Sink] = (), stats: RunStats | None = None) -> None:
        self.stages = LayerStages(tracker)  # per output: its per-stream state
        self.renderer = renderer
        self.sinks = list(sinks)
        self.stats = stats or RunStats()
        self._done_times: deque[float] = deque(maxlen=30)  # for the HUD's fps over the last frames

    def finish(self, result: FrameResult, source: SourceStatus) -> FrameResult:
        """``result`` through the layer stages, the renderer and every sink; its timings recorded."""
        timings = dict(result.timings)
        t = time.perf_counter()
        pts = result.frame.pts
        layers = self.stages.update(result.layers, pts) if result.inferred else self.stages.carry(pts)
        result = replace(result, layers=layers, source=source)
        timings["post"] = time.perf_counter() - t
        now = time.monotonic()
        self._done_times.append(now)
        if self.renderer is not None:
            t = time.perf_counter()
            hud = {**timings, "fps": self.recent_fps(), "latency": now - result.frame.captured_at}
            result = replace(result, rendered=self.renderer.render(replace(result, timings=hud)))
            timings["render"] = time.perf_counter() - t
        t = time.perf_counter()
        for sink in self.sinks:
            sink.write(result)
        timings["sinks"] = time.perf_counter() - t
        timings["latency"] = time.monotonic() - result.frame.captured_at
        result = replace(result, timings=timings)
        self.stats.add(timings, time.monotonic(), result.inferred)
        return result

    def recent_fps(self) -> float:
        times = self._done_times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def close_sinks(self, failed: bool) -> tuple[list[Path], list[Exception]]:
        """Finalise every sink (``failed``: keep partial outputs beside their targets). Returns the
        partial outputs kept and the errors of sinks that failed to finalise; one failing never keeps
        the others from finalising."""
        kept: list[Path] = []
        errors: list[Exception] = []
        for sink in self.sinks:
            try:
                path = finish(sink, failed)
                if path is not None:
                    kept.append(path)
            except Exception as exc:  # noqa: BLE001 - collected, the caller raises or reports the first
                errors.append(exc)
        return kept, errors
