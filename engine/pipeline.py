"""The pipeline: capture thread → inference thread → (caller's thread) tracking, lanes, rendering, sinks.

Every hop is a bounded queue. Files are lossless (a full queue blocks the producer);
live sources keep the latest frame (the capture thread drops the oldest). The stateful
stages (tracker, lane smoothing, encoders) run on the thread that iterates the pipeline,
so they need no locks, while decoding and inference overlap with them. With ``interval`` the
inference thread sends only every Nth frame through the backend and passes the others on
uninferred, in order; the layer stages carry the last layers over them. A failing stage
hands its exception down the queue; the caller gets it re-raised. Every wait is bounded
and checks the stop event, so ``close()`` always returns within its deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from segengine.backends.base import Backend, BackendOptions, Pipelined
from segengine.backends.memory import is_out_of_memory, out_of_memory
from segengine.backends.registry import Choice, choose, open_backend, prepare_for
from segengine.capture.base import Source, SourceOptions, SourceTimeout
from segengine.capture.factory import open_source
from segengine.capture.thread import CaptureThread
from segengine.errors import ConfigError, EndOfStream
from segengine.graph.prepare import GraphTarget
from segengine.interval import Interval, IntervalPolicy, check_interval, make_policy
from segengine.layers import decode_layers
from segengine.lifecycle import Lifecycle
from segengine.models import zoo
from segengine.post import PostStages
from segengine.render.base import Renderer
from segengine.render.compose import LayerRenderer
from segengine.sinks.base import Sink
from segengine.stage import Stage
from segengine.stats import RunStats
from segengine.tracking.base import Tracker
from segengine.types import Frame, FrameResult, SourceInfo

log = logging.getLogger("segengine")
POLL = 0.1  # seconds between stop-event checks in every wait


class Pipeline(Lifecycle):
    """``with Pipeline("video.mp4") as p: for result in p: ...`` — results in frame order.

    What runs: ``preset`` (default "road") or your ``model`` ONNX (with ``classes``), on ``backend``
    (a name, "auto" by default, or an opened Backend object, which then fixes the graph). ``sinks``
    receive every result (rendered unless ``render=False``); ``close()`` stops all threads within
    ``deadline`` seconds and finalises every sink, also after an error or a signal. ``interval``: the
    networks run on every Nth frame only (1, the default: every frame), the frames between carried
    (``FrameResult.inferred`` is False); "auto" adapts N to keep up with a live feed and is 1 on a
    file (see ``segengine.interval``). Arguments that would have no effect together are refused.
    """

    def __init__(self, source: str | Source, *, preset: str | None = None, model: Path | None = None,
                 classes: Path | None = None, backend: str | Backend = "auto", sinks: Sequence[Sink] = (),
                 render: bool = True, tracker: Tracker | None = None, renderer: Renderer | None = None,
                 max_frames: int | None = None, queue_size: int = 4, dirs: zoo.WeightDirs | None = None,
                 options: BackendOptions | None = None, deadline: float = 5.0, loop: bool | None = None,
                 source_options: SourceOptions | None = None, interval: Interval = 1) -> None:
        _check_arguments(source, preset, model, classes, backend, render, renderer, dirs, options, loop,
                         source_options)
        self.source = (open_source(source, loop=bool(loop), options=source_options) if isinstance(source, str)
                       else source)
        self.interval = check_interval(interval)
        self._policy: IntervalPolicy | None = None  # made at start, once the source knows if it is live
        self.target = GraphTarget(preset or "road", model, classes)
        self.dirs = dirs
        # One folder set for both the graph cache and the backends' own caches.
        self.options = replace(options, dirs=options.dirs or dirs) if options else BackendOptions(dirs=dirs)
        self._given: Backend | None = None if isinstance(backend, str) else backend
        self.choice: Choice = (choose(backend, models=self.target.models()) if isinstance(backend, str)
                               else Choice(backend.name, "given to the pipeline"))
        self.tracker = tracker
        self.max_frames = max_frames
        self.deadline = deadline
        self.stats = RunStats()
        self._post = PostStages(tracker=tracker, renderer=renderer or (LayerRenderer() if render else None),
                                sinks=sinks, stats=self.stats)
        self.sinks = self._post.sinks
        self.renderer = self._post.renderer
        self._capture = CaptureThread(self.source, queue_size=queue_size)
        self._stop = threading.Event()
        self._results: Stage[FrameResult] = Stage("results", maxsize=queue_size, stop=self._stop)
        self._infer_thread = threading.Thread(target=self._infer_loop, name="segengine-infer", daemon=True)
        self._backend: Backend | None = self._given
        self._started = self._closed = False
        self.kept: list[Path] = []  # partial outputs a failed run left beside their targets

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def info(self) -> SourceInfo:
        return self.source.info

    def start(self) -> Pipeline:
        if not self._started:
            self._started = True
            self.source.open()  # here, so a bad source fails in the caller's thread, before any work
            fps = self.info.fps
            self._policy = make_policy(self.interval, live=self.info.live, frame_interval=1 / fps if fps else None)
            self._capture.start()
            self._infer_thread.start()
            self.stats.started = time.monotonic()
        return self

    def close(self, failed: bool = False) -> None:
        """Stop all threads (bounded by the deadline) and finalise every sink. Idempotent. ``failed``:
        the run ended in an error, so file sinks keep what they wrote beside their targets (listed
        in ``kept``) instead of replacing them."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        end = time.monotonic() + self.deadline
        self._capture.stop(timeout=max(0.1, end - time.monotonic()))
        if self._infer_thread.is_alive():
            self._infer_thread.join(timeout=max(0.1, end - time.monotonic()))
        self.stats.source = self._capture.status
        kept, errors = self._post.close_sinks(failed)
        self.kept.extend(kept)
        if self._backend is not None and self._backend is not self._given and not self._infer_thread.is_alive():
            self._backend.close()  # a backend given to the pipeline stays its owner's to close
        if errors:
            raise errors[0]

    # -- the inference thread ----------------------------------------------------------------

    def _infer_loop(self) -> None:
        """Frames in order through the backend. A backend that can keep frames in flight
        (``submit``/``collect``: TensorRT's double-buffered runtime, OpenVINO's streams) gets up
        to its ``depth`` frames submitted before the oldest is collected, so their work overlaps;
        when no next frame is waiting (a live feed between frames), the oldest is collected at once, so
        overlap never adds latency. Frames the interval policy skips never reach the backend: they
        go out uninferred, in order (behind a frame still in flight, if one is)."""
        pending: deque[tuple[Frame, float, bool]] = deque()  # (frame, started, submitted); none collected yet
        policy = self._policy
        assert policy is not None
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
                count += 1
                resized = self._backend is None or self._frame_size() != frame.size  # nothing to carry over
                if not policy.due(frame.pts, force=resized):
                    if pending:
                        pending.append((frame, 0.0, False))
                    else:
                        self._results.put(FrameResult(frame, inferred=False))
                    continue
                t0 = time.perf_counter()
                if pending and resized:
                    self._collect(pending)  # the frame size changed: finish with the old graph first
                backend = self._backend_for(frame.size)
                t1 = time.perf_counter()
                if t1 - t0 > 0.5:
                    log.info("graph ready for %dx%d in %.1f s", frame.size[1], frame.size[0], t1 - t0)
                if isinstance(backend, Pipelined):
                    backend.submit(frame.image)
                    pending.append((frame, t1, True))
                    if sum(submitted for *_, submitted in pending) >= backend.depth:
                        self._collect(pending)
                else:
                    self._emit(frame, backend.infer(frame.image), t1)
            while pending and not self._stop.is_set():
                self._collect(pending)
            self._results.finish(EndOfStream("the pipeline's input ended"))
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            self._salvage(pending)
            self._results.finish(self._explained(exc))

    def _explained(self, exc: BaseException) -> BaseException:
        """An out-of-memory error, whoever raised it, named with the model and frame size."""
        if not is_out_of_memory(exc):
            return exc
        if self._backend is not None:
            return out_of_memory(exc, self.choice.name, (self._backend.spec.name,), self._frame_size())
        return out_of_memory(exc, self.choice.name, self.target.models(), self.info.size or (0, 0))

    def _salvage(self, pending: deque[tuple[Frame, float, bool]]) -> None:
        """After a failure (a camera unplugged mid-file), the frames already in flight are still
        the user's: they go out before the error, unless the backend itself is what failed."""
        try:
            while pending and not self._stop.is_set():
                self._collect(pending)
        except Exception:  # noqa: BLE001 - the first error is the one the caller gets
            log.debug("frames in flight lost after the failure", exc_info=True)

    def _collect(self, pending: deque[tuple[Frame, float, bool]]) -> None:
        """The oldest frame in flight, then the skipped frames queued behind it."""
        frame, started, _ = pending.popleft()
        assert isinstance(self._backend, Pipelined)
        self._emit(frame, self._backend.collect(), started)
        while pending and not pending[0][2]:
            self._results.put(FrameResult(pending.popleft()[0], inferred=False))

    def _emit(self, frame: Frame, outputs: dict[str, np.ndarray], started: float) -> None:
        assert self._backend is not None and self._policy is not None
        layers = decode_layers(outputs, self._backend.spec)
        elapsed = time.perf_counter() - started
        self._policy.observe(elapsed)
        self._results.put(FrameResult(frame, layers, timings={"infer": elapsed}))

    def _frame_size(self) -> tuple[int, int]:
        assert self._backend is not None
        return self._backend.spec.frame_size

    def _backend_for(self, size: tuple[int, int]) -> Backend:
        if self._backend is not None and self._frame_size() == size:
            return self._backend
        if self._given is not None:
            h, w = self._frame_size()
            raise ConfigError(f"the backend given to the pipeline runs a graph for {w}x{h} frames; this source "
                              f"gives {size[1]}x{size[0]}: pass a backend name instead, so graphs follow the frames")
        if self._backend is not None:
            self._backend.close()
        # A live feed wants each frame soon (one at a time); a file wants the most frames a second.
        options = replace(self.options, streams=1) if self.info.live and not self.options.streams else self.options
        self._backend = open_backend(self.choice, prepare_for(self.choice, self.target, size, self.dirs), options)
        return self._backend

    # -- the caller's thread -----------------------------------------------------------------

    def __iter__(self) -> Iterator[FrameResult]:
        self.start()
        for result in self._results.drain():  # the results stage stops with the pipeline
            yield self._finish(result)

    def _finish(self, result: FrameResult) -> FrameResult:
        return self._post.finish(result, self._capture.status)

    def run(self, on_result=None) -> RunStats:
        """Process the whole source; ``on_result(result)`` is called for each frame (e.g. a progress bar)."""
        with self:
            for result in self:
                if on_result is not None:
                    on_result(result)
        return self.stats


def _check_arguments(source: str | Source, preset: str | None, model: Path | None, classes: Path | None,
                     backend: str | Backend, render: bool, renderer: Renderer | None, dirs: zoo.WeightDirs | None,
                     options: BackendOptions | None, loop: bool | None, source_options: SourceOptions | None) -> None:
    """Every combination that would silently do nothing is an error instead."""
    if not isinstance(source, str) and (loop is not None or source_options is not None):
        raise ConfigError("loop and source_options apply when the pipeline opens the source from a URI; "
                          "for a ready source, pass them to open_source(uri, loop=..., options=...)")
    if renderer is not None and not render:
        raise ConfigError("render=False with a renderer: give one or the other")
    if preset is not None and model is not None:
        raise ConfigError(f"both a preset ({preset}) and your own model ({model}): choose one")
    if classes is not None and model is None:
        raise ConfigError("a class list (--classes) goes with your own model (--model FILE.onnx); "
                          "the presets have their own classes")
    if not isinstance(backend, str) and any(v is not None for v in (preset, model, dirs, options)):
        raise ConfigError("a backend object runs its own graph: preset, model, dirs and options do not apply")
