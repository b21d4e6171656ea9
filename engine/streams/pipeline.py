"""Many streams, one engine: every source's frames batched through one graph, each stream with its own state.

``MultiPipeline(["a.mp4", "rtsp://cam/1"])`` runs one capture thread per source, one inference
thread (the :class:`~segengine.streams.batcher.Batcher`: one backend call for frames of several
streams) and one post thread per stream (its tracker, lane smoothing, renderer, sinks and
statistics). Iterating yields every stream's results as they are done, each tagged with its stream
id (``result.frame.stream``), in frame order within a stream. Streams come and go while it runs
(``add_source`` / ``remove_source``); one that fails (a corrupt file, a camera that gives up
reconnecting, a full disk) stops alone and is reported in ``failures``, the others go on. A
failure of the engine itself (the backend) ends every stream and is raised to the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from segengine.backends.base import Backend, BackendOptions
from segengine.backends.registry import BACKENDS, Choice, choose, open_backend, prepare_for
from segengine.capture.base import Source, SourceOptions
from segengine.capture.factory import open_source
from segengine.errors import ConfigError, EndOfStream
from segengine.graph.prepare import GraphTarget
from segengine.lifecycle import Lifecycle
from segengine.models import zoo
from segengine.post import PostStages
from segengine.render.base import Renderer
from segengine.render.compose import LayerRenderer
from segengine.sinks.base import Sink, finish
from segengine.stage import Stage
from segengine.stats import RunStats
from segengine.streams.batcher import Batcher
from segengine.streams.ids import check_id, unique_ids
from segengine.streams.stream import Stream, StreamOptions
from segengine.tracking.base import Tracker
from segengine.types import FrameResult

log = logging.getLogger("segengine")
POLL = 0.1


class MultiPipeline(Lifecycle):
    """``with MultiPipeline(["a.mp4", "b.mp4"]) as p: for r in p: r.frame.stream, r.instances``.

    What runs is chosen as for :class:`~segengine.pipeline.Pipeline` (``preset``, or ``model`` with
    ``classes``, on ``backend``). ``max_batch``: frames per backend call at most (the graph is
    exported with a batch axis up to it; a user's own model runs one frame at a time).
    ``batch_timeout``: seconds a partial batch waits for more streams (None: half the fastest
    stream's frame interval). ``render``: streams' default for drawing overlays. ``linger``: keep
    iterating while no stream runs (a service adding sources later); else iteration ends once every
    stream has ended. ``close()`` stops every thread within ``deadline`` seconds and finalises
    every sink, also after an error or a signal.
    """

    def __init__(self, sources: Sequence[str | Source] = (), *, preset: str | None = None,
                 model: Path | None = None, classes: Path | None = None, backend: str | Backend = "auto",
                 max_batch: int = 4, batch_timeout: float | None = None, render: bool = True,
                 dirs: zoo.WeightDirs | None = None, options: BackendOptions | None = None,
                 deadline: float = 5.0, linger: bool = False, results_size: int = 64) -> None:
        if preset is not None and model is not None:
            raise ConfigError(f"both a preset ({preset}) and your own model ({model}): choose one")
        if not 1 <= max_batch <= 64:
            raise ConfigError(f"max_batch must be 1..64, got {max_batch}")
        if batch_timeout is not None and not 0 <= batch_timeout <= 10:
            raise ConfigError(f"batch_timeout must be 0..10 seconds, got {batch_timeout}")
        self.target = GraphTarget(preset or "road", model, classes)
        self._given: Backend | None = None if isinstance(backend, str) else backend
        if self._given is not None and (preset is not None or model is not None):
            raise ConfigError("a backend object runs its own graph: preset and model do not apply")
        self.choice: Choice = (choose(backend, models=self.target.models()) if isinstance(backend, str)
                               else Choice(backend.name, "given to the pipeline"))
        self.dirs = dirs
        options = options or BackendOptions(dirs=dirs)
        self.options = replace(options, dirs=options.dirs or dirs)
        self.max_batch = max_batch
        self.render = render
        self.deadline = deadline
        self.linger = linger
        self._stop = threading.Event()
        self._failed = threading.Event()  # the run failed: every stream keeps partial outputs
        self._ready = threading.Event()
        self._lock = threading.Lock()  # guards _streams (the batcher reads snapshots)
        self._streams: dict[str, Stream] = {}  # every stream by id, in the order added; running: not done
        self._results: Stage[FrameResult] = Stage("results", maxsize=results_size, stop=self._stop)
        self.batcher = Batcher(self._active, self._ready, timeout=batch_timeout)
        self._backends: dict[tuple[int, int], Backend] = {}  # frame size → its (batch) graph's backend
        self._singles: dict[tuple[int, int], Backend] = {}  # frame size → its static batch-1 graph's
        self._staging: dict[tuple[int, int], np.ndarray] = {}
        self._thread = threading.Thread(target=self._infer_loop, name="segengine-batcher", daemon=True)
        self._started = self._closed = False
        for source in sources:
            self.add_source(source)

    # -- streams ----------------------------------------------------------------------------

    def add_source(self, source: str | Source, *, stream_id: str | None = None,
                   options: StreamOptions | None = None, sinks: Sequence[Sink] = (), render: bool | None = None,
                   renderer: Renderer | None = None, tracker: Tracker | None = None, loop: bool = False,
                   source_options: SourceOptions | None = None) -> str:
        """Add a stream (also while running) and return its id: ``stream_id``, or one derived from
        the source (never a password). The source opens here, so a bad one raises in the caller's
        thread; the sinks given are the stream's own and are finalised when it ends (also if adding
        it fails)."""
        try:
            if self._closed:
                raise ConfigError("this pipeline is closed: make a new one")
            with self._lock:
                # A removed stream's id may be given again (a camera taken out and put back).
                taken = [sid for sid, s in self._streams.items() if s.state != "removed"]
                name = source if isinstance(source, str) else source.info.name
                sid = unique_ids([stream_id], [name], taken)[0] if stream_id is None else check_id(stream_id)
                if sid in taken:
                    raise ConfigError(f"a stream named {sid!r} is already in this pipeline: give another id")
            if isinstance(source, str):
                source = open_source(source, loop=loop, options=source_options)
            elif loop or source_options is not None:
                raise ConfigError("loop and source_options apply to a source given as a URI")
            draw = self.render if render is None else render
            post = PostStages(tracker=tracker, renderer=renderer or (LayerRenderer() if draw else None), sinks=sinks,
                              stats=RunStats())
        except BaseException:
            for sink in sinks:
                finish(sink, failed=True)
            raise
        stream = Stream(sid, source, options or StreamOptions(), post, ready=self._ready, results=self._results,
                        failed=self._failed)
        try:
            if self._started:
                stream.start()
        except BaseException as exc:
            stream.halt(self.deadline, error=exc)  # its sinks keep nothing: no frame was written
            raise
        with self._lock:
            self._streams[sid] = stream  # a removed stream's id given again: it keeps its place
        self._ready.set()
        return sid

    def remove_source(self, stream_id: str, timeout: float | None = None) -> Stream:
        """Stop one stream now, finalise its outputs and return it (its ``stats``, ``state``)."""
        running = {s.id: s for s in self._active()}
        stream = running.get(stream_id)
        if stream is None:
            raise ConfigError(f"no running stream {stream_id!r} (running: {', '.join(running) or 'none'})")
        if not stream.halt(self.deadline if timeout is None else timeout, removed=True):
            log.warning("stream %s did not stop within the deadline", stream_id)
        return stream

    @property
    def streams(self) -> dict[str, Stream]:
        """Every stream by id, running or finished, in the order added."""
        with self._lock:
            return dict(self._streams)

    @property
    def failures(self) -> dict[str, BaseException]:
        return {sid: s.error for sid, s in self.streams.items() if s.error is not None}

    def _active(self) -> list[Stream]:
        with self._lock:
            return [s for s in self._streams.values() if not s.done.is_set()]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> MultiPipeline:
        if not self._started:
            self._started = True
            for stream in list(self._streams.values()):
                stream.start()  # a bad source fails here, before any work
            self._thread.start()
        return self

    def close(self, failed: bool = False) -> None:
        """Stop every thread (bounded by the deadline) and finalise every stream's sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if failed:
            self._failed.set()
        self._stop.set()
        end = time.monotonic() + self.deadline
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.1, end - time.monotonic()))
        for stream in self._active():
            stream.halt(max(0.1, end - time.monotonic()))
        if not self._thread.is_alive():
            for backend in [*self._backends.values(), *self._singles.values()]:
                if backend is not self._given:  # a backend given to the pipeline stays its owner's to close
                    backend.close()
            self._backends.clear()
            self._singles.clear()

    # -- the inference thread ---------------------------------------------------------------

    def _infer_loop(self) -> None:
        try:
            for stream in self._active():  # graphs ready before the first frame: its latency is not the build's
                if stream.size is not None:
                    self._backend_for(stream.size)
            while not self._stop.is_set():
                batch = self.batcher.gather(self.max_batch, self._stop, wait=not self.batcher.busy)
                if batch.entries:
                    self.batcher.run(batch, self._backend_for, self._stage_for)
                elif self.batcher.busy:
                    self.batcher.collect()  # nothing new: the oldest frame in flight goes out now
                if not self.batcher.busy:  # no graph is closed under a frame in flight
                    self._close_unneeded_graphs()
        except BaseException as exc:  # the engine itself failed: every stream ends with it
            self._failed.set()
            for stream in self._active():
                stream.end(exc)
            self._results.finish(exc, timeout=self.deadline)

    def _backend_for(self, size: tuple[int, int], rows: int = 0) -> Backend:
        """The backend for frames of ``size``: its batch graph, or for a call of one frame (``rows``) the
        static batch-1 graph beside it, where there is one: a batch axis costs ONNX Runtime 6-9 % at
        batch 1 (benchmarks/batch_scaling.py), and both give the same outputs bit for bit."""
        backend = self._backends.get(size)
        if backend is None and self._given is not None:
            h, w = self._given.spec.frame_size
            if size != (h, w):
                raise ConfigError(f"the backend given to the pipeline runs a graph for {w}x{h} frames; a stream "
                                  f"gives {size[1]}x{size[0]}: pass a backend name, so graphs follow the frames")
            backend = self._backends[size] = self._given
        if backend is None:
            t0 = time.perf_counter()
            batch = self.max_batch if BACKENDS[self.choice.name].batching else 1  # else frames in flight
            prepared = prepare_for(self.choice, self.target, size, self.dirs, max_batch=batch)
            # The backend's own choice of streams: with OpenVINO, two requests in flight (throughput) gave
            # live cameras a lower p99 than one request on every core once there were two or more
            # (benchmarks/many_streams.py: 1015 vs 1437 ms for 2 cameras).
            backend = self._backends[size] = open_backend(self.choice, prepared, self.options)
            if prepared.spec.input.max_batch > 1:  # opened now, not mid-run: an export takes seconds
                single = prepare_for(self.choice, self.target, size, self.dirs)
                self._singles[size] = open_backend(self.choice, single, self.options)
            log.info("graph ready for %dx%d (batch up to %d) in %.1f s", size[1], size[0],
                     prepared.spec.input.max_batch, time.perf_counter() - t0)
        return self._singles.get(size, backend) if rows == 1 else backend

    def _stage_for(self, size: tuple[int, int], rows: int) -> np.ndarray:
        """The batch input for frames of ``size``, allocated once per size and reused."""
        buffer = self._staging.get(size)
        if buffer is None or len(buffer) < rows:
            buffer = self._staging[size] = np.empty((max(rows, self.max_batch), *size, 3), np.uint8)
        return buffer[:rows]

    def _close_unneeded_graphs(self) -> None:
        """Close the graphs no running stream needs any more (a camera that changed its frame size)."""
        active = self._active()
        needed = {s.size for s in active}
        for size in [size for size in self._backends if active and size not in needed]:
            backend = self._backends.pop(size)
            if backend is not self._given:
                backend.close()
            if size in self._singles:
                self._singles.pop(size).close()
            self._staging.pop(size, None)

    # -- the caller's thread ----------------------------------------------------------------

    def __iter__(self) -> Iterator[FrameResult]:
        self.start()
        while not self._stop.is_set():
            try:
                yield self._results.get(timeout=POLL)
                continue
            except queue.Empty:
                pass
            except EndOfStream:
                break
            # Every stream done: its last result was queued before it said so.
            if not self.linger and not self._active() and self._results.empty():
                break

    def run(self, on_result: Callable[[FrameResult], object] | None = None) -> dict[str, Stream]:
        """Process every stream to its end; ``on_result(result)`` for each frame. Returns the streams."""
        with self:
            for result in self:
                if on_result is not None:
                    on_result(result)
        return self.streams
