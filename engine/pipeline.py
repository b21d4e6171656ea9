"""The pipeline: capture thread → inference thread → (caller's thread) tracking, lanes, rendering, sinks.

Every hop is a bounded queue. Files are lossless (a full queue blocks the producer);
live sources keep the latest frame (the capture thread drops the oldest). The stateful
stages (tracker, lane smoothing, encoders) run on the thread that iterates the pipeline,
so they need no locks, while decoding and inference overlap with them. A failing stage
hands its exception down the queue; the caller gets it re-raised. Every wait is bounded
and checks the stop event, so ``close()`` always returns within its deadline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from segengine.backends.base import Backend, Pipelined
from segengine.backends.select import Choice, choose, open_backend
from segengine.capture.base import Source, SourceOptions, SourceTimeout
from segengine.capture.factory import open_source
from segengine.capture.thread import CaptureThread
from segengine.errors import EndOfStream
from segengine.lanes import LaneSmoother, fit_lanes
from segengine.render.base import Renderer
from segengine.render.overlay import OverlayRenderer
from segengine.results import decode
from segengine.sinks.base import Sink
from segengine.stats import RunStats
from segengine.tracking.base import Tracker
from segengine.tracking.mask_tracker import MaskTracker
from segengine.types import Frame, FrameResult, SourceInfo
from segengine.models import zoo

log = logging.getLogger("segengine")
POLL = 0.1  # seconds between stop-event checks in every wait


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_END = object()


class Pipeline:
    """``with Pipeline("video.mp4") as p: for result in p: ...`` — results in frame order.

    ``sinks`` receive every result (rendered when ``render`` is on); ``close()`` stops all
    threads within ``deadline`` seconds and finalises every sink, also after an error or a
    signal.
    """

    def __init__(self, source: str | Source, *, preset: str = "road", model: Path | None = None,
                 classes: Path | None = None, backend: str = "auto", sinks: Sequence[Sink] = (), render: bool = True,
                 tracker: Tracker | None = None, renderer: Renderer | None = None,
                 max_frames: int | None = None, queue_size: int = 4, dirs: zoo.WeightDirs | None = None,
                 deadline: float = 5.0, loop: bool = False, source_options: SourceOptions | None = None) -> None:
        self.source = (open_source(source, loop=loop, options=source_options) if isinstance(source, str)
                       else source)
        self.preset, self.model, self.classes, self.dirs = preset, model, classes, dirs
        self.choice: Choice = choose(backend)
        self.sinks = list(sinks)
        self.tracker = tracker or MaskTracker()
        self.lane_smoother = LaneSmoother()
        self.renderer = renderer or (OverlayRenderer() if render else None)
        self.max_frames = max_frames
        self.deadline = deadline
        self.stats = RunStats()
        self._capture = CaptureThread(self.source, queue_size=queue_size)
        self._results: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._infer_thread = threading.Thread(target=self._infer_loop, name="segengine-infer", daemon=True)
        self._backend: Backend | None = None
        self._started = self._closed = False
        self._done_times: deque[float] = deque(maxlen=30)  # for the HUD's fps over the last frames

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def info(self) -> SourceInfo:
        return self.source.info

    def start(self) -> Pipeline:
        if not self._started:
            self._started = True
            self.source.open()  # here, so a bad source fails in the caller's thread, before any work
            self._capture.start()
            self._infer_thread.start()
            self.stats.started = time.monotonic()
        return self

    def __enter__(self) -> Pipeline:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run: finalise the sinks here
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask every stage to stop; returns at once."""
        self._stop.set()

    def close(self) -> None:
        """Stop all threads (bounded by the deadline) and finalise every sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        end = time.monotonic() + self.deadline
        self._capture.stop(timeout=max(0.1, end - time.monotonic()))
        if self._infer_thread.is_alive():
            self._infer_thread.join(timeout=max(0.1, end - time.monotonic()))
        self.stats.source = self._capture.status
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one sink failing must not keep the others from finalising
                errors.append(exc)
        if self._backend is not None and not self._infer_thread.is_alive():
            self._backend.close()
        if errors:
            raise errors[0]

    # -- the inference thread ----------------------------------------------------------------

    def _infer_loop(self) -> None:
        """Frames in order through the backend. A backend that can keep a frame in flight
        (``submit``/``collect``: TensorRT's double-buffered runtime) gets frame N+1 submitted
        before frame N is collected, so its copy overlaps N's compute; when no next frame is
        waiting (a live feed between frames), the frame in flight is collected at once, so
        overlap never adds latency."""
        pending: deque[tuple[Frame, float]] = deque()  # submitted, not yet collected
        try:
            if self.info.size is not None:  # ready before the first frame: its latency is not the build's
                self._backend_for(self.info.size)
            count = 0
            while not self._stop.is_set() and (self.max_frames is None or count < self.max_frames):
                try:
                    frame = self._capture.get(timeout=0.0 if pending else POLL)
                except SourceTimeout:
                    if pending:
                        self._collect(pending)
                    continue
                except EndOfStream:
                    break
                t0 = time.perf_counter()
                if pending and self._backend is not None and self._frame_size() != frame.size:
                    self._collect(pending)  # the frame size changed: finish with the old graph first
                backend = self._backend_for(frame.size)
                t1 = time.perf_counter()
                if t1 - t0 > 0.5:
                    log.info("graph ready for %dx%d in %.1f s", frame.size[1], frame.size[0], t1 - t0)
                if isinstance(backend, Pipelined):
                    backend.submit(frame.image)
                    pending.append((frame, t1))
                    if len(pending) > 1:
                        self._collect(pending)
                else:
                    self._emit(frame, backend.infer(frame.image), t1)
                count += 1
            while pending and not self._stop.is_set():
                self._collect(pending)
            self._put(_END)
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            self._put(_Failure(exc))

    def _collect(self, pending: deque[tuple[Frame, float]]) -> None:
        frame, submitted = pending.popleft()
        assert isinstance(self._backend, Pipelined)
        self._emit(frame, self._backend.collect(), submitted)

    def _emit(self, frame: Frame, outputs: dict[str, np.ndarray], started: float) -> None:
        assert self._backend is not None
        result = decode(outputs, self._backend.description, frame)
        self._put(replace(result, timings={"infer": time.perf_counter() - started}))

    def _frame_size(self) -> tuple[int, int]:
        assert self._backend is not None
        return tuple(self._backend.description["frame_size"])  # type: ignore[return-value]

    def _backend_for(self, size: tuple[int, int]) -> Backend:
        if self._backend is not None and self._frame_size() == size:
            return self._backend
        if self._backend is not None:
            self._backend.close()
        self._backend = open_backend(self.choice, self.preset, size, model_file=self.model, classes=self.classes,
                                     dirs=self.dirs)
        return self._backend

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._results.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    # -- the caller's thread -----------------------------------------------------------------

    def __iter__(self) -> Iterator[FrameResult]:
        self.start()
        while not self._stop.is_set():
            try:
                item = self._results.get(timeout=POLL)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            yield self._finish(item)  # type: ignore[arg-type]

    def _finish(self, result: FrameResult) -> FrameResult:
        timings = dict(result.timings)
        t = time.perf_counter()
        if result.instances is not None:
            result = replace(result, instances=self.tracker.update(result.instances, result.frame.pts))
        if result.lane_mask is not None:
            result = replace(result, lanes=self.lane_smoother.update(fit_lanes(result.lane_mask)))
        timings["post"] = time.perf_counter() - t
        result = replace(result, source=self._capture.status)
        now = time.monotonic()
        self._done_times.append(now)
        if self.renderer is not None:
            t = time.perf_counter()
            hud = {**timings, "fps": self._recent_fps(), "latency": now - result.frame.captured_at}
            result = replace(result, rendered=self.renderer.render(replace(result, timings=hud)))
            timings["render"] = time.perf_counter() - t
        t = time.perf_counter()
        for sink in self.sinks:
            sink.write(result)
        timings["sinks"] = time.perf_counter() - t
        timings["latency"] = time.monotonic() - result.frame.captured_at
        result = replace(result, timings=timings)
        self.stats.add(timings, time.monotonic())
        return result

    def _recent_fps(self) -> float:
        times = self._done_times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def run(self, on_result=None) -> RunStats:
        """Process the whole source; ``on_result(result)`` is called for each frame (e.g. a progress bar)."""
        with self:
            for result in self:
                if on_result is not None:
                    on_result(result)
        return self.stats
