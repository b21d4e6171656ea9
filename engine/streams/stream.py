"""One stream of a multi-stream pipeline and everything that is its own.

A stream owns its capture thread (a bounded queue with the stream's drop policy), its interval
policy, and a post thread that runs its :class:`~segengine.post.PostStages` (tracker, lane
smoothing, renderer, sinks, statistics) in frame order. The batcher is the only producer of its
inbox: it takes frames with :meth:`Stream.take` (never blocking) and hands results back with
:meth:`Stream.deliver`. The stream ends alone (its source ended or failed, a sink failed, or it was
removed): its outputs are finalised on its own thread while the other streams go on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from segengine.capture.base import Source, SourceTimeout
from segengine.capture.thread import CaptureThread
from segengine.errors import ConfigError, EndOfStream
from segengine.interval import Interval, IntervalPolicy, check_interval, make_policy
from segengine.post import PostStages
from segengine.stage import POLL, Stage
from segengine.types import Frame, FrameResult, SourceStatus

log = logging.getLogger("segengine")
StreamState = Literal["idle", "running", "ended", "failed", "removed", "stopped"]


@dataclass(frozen=True)
class StreamOptions:
    """One stream's own settings. ``policy``: "auto" drops the oldest frame of a live source and
    none of a file; "lossless" or "latest" force one. ``max_frames``: stop after that many frames."""

    interval: Interval = 1
    policy: Literal["auto", "lossless", "latest"] = "auto"
    max_frames: int | None = None
    # Frames read ahead. None: 4 for a file; 1 for a live source, so the batcher always takes the
    # newest frame (four queued would add four engine periods of latency whenever the engine is slower
    # than the camera).
    queue_size: int | None = None

    def __post_init__(self) -> None:
        check_interval(self.interval)
        if self.policy not in ("auto", "lossless", "latest"):
            raise ConfigError(f"drop policy {self.policy!r}: use auto, lossless or latest")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.queue_size is not None and self.queue_size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {self.queue_size}")


class Stream:
    def __init__(self, stream_id: str, source: Source, options: StreamOptions, post: PostStages, *,
                 ready: threading.Event, results: Stage[FrameResult], failed: threading.Event) -> None:
        self.id = stream_id
        self.source = source
        self.options = options
        self.post = post
        self.stats = post.stats
        self.state: StreamState = "idle"
        self.error: BaseException | None = None  # why it failed, if it did
        self.kept: list[Path] = []  # partial outputs a failure left beside their targets
        self.done = threading.Event()  # set once its outputs are final
        self._halt = threading.Event()  # stop this stream only (removed, or the pipeline closing)
        self._removed = False
        self._failed_run = failed  # the whole run failed: outputs are kept as partials
        forced = None if options.policy == "auto" else options.policy
        live = forced == "latest" or (forced is None and source.info.live)
        ahead = options.queue_size or (1 if live else 4)
        self.capture = CaptureThread(source, queue_size=ahead, policy=forced, ready=ready)
        # One slot more than the batcher fills, so the end marker always fits without waiting.
        self._inbox: Stage[FrameResult] = Stage(f"post {stream_id}", maxsize=max(ahead, 4) + 1, stop=self._halt)
        self._results = results
        self._thread = threading.Thread(target=self._post_loop, name=f"segengine-post:{stream_id}", daemon=True)
        self.policy: IntervalPolicy | None = None
        self.size: tuple[int, int] | None = None  # of its last frame: the graph it needs
        self.taken = 0  # frames handed to the batcher
        self.ended = False  # the batcher takes no more of its frames
        self.reserved = 0  # frames taken by the batcher and not yet delivered (maybe in flight)
        self._end_sent = False

    # -- lifecycle (the pipeline's threads) ----------------------------------------------------

    def start(self) -> None:
        """Open the source (here, so a bad source fails in the caller's thread) and start its threads."""
        self.source.open()
        info = self.source.info
        self.size = info.size
        self.policy = make_policy(self.options.interval, live=info.live,
                                  frame_interval=1 / info.fps if info.fps else None)
        self.state = "running"
        self.stats.started = time.monotonic()
        self.capture.start()
        self._thread.start()

    def halt(self, timeout: float, *, removed: bool = False, error: BaseException | None = None) -> bool:
        """Stop this stream now (its queued frames are dropped) and wait until its outputs are final.
        ``removed``: it was taken out of a running pipeline (else the pipeline is closing); ``error``:
        why it could not start (then its outputs are aborted)."""
        self._removed = removed
        self._halt.set()
        if self._thread.ident is None and not self.done.is_set():  # never started
            self._finalise(error)
        return self.done.wait(timeout)

    @property
    def status(self) -> SourceStatus:
        return self.capture.status

    @property
    def live(self) -> bool:
        return self.capture.policy == "latest"

    # -- the batcher's side --------------------------------------------------------------------

    def open_for_frames(self) -> bool:
        """Whether the batcher may take a frame now: running, and room for its result (and for the
        results of frames taken and not yet delivered, which may be in flight)."""
        return not self.ended and not self._halt.is_set() and self._inbox.room() - self.reserved > 1

    def take(self) -> tuple[list[FrameResult], Frame | None, BaseException | None]:
        """Frames queued now, without waiting: the skipped ones (``--interval``) as results, at most
        one frame due for the networks, and the source's end (``EndOfStream``, or why it failed) if it
        came. The batcher hands all three back in this order (:meth:`deliver`, :meth:`end`)."""
        skipped: list[FrameResult] = []
        limit = self.options.max_frames
        while self.open_for_frames():
            if limit is not None and self.taken >= limit:
                self.ended = True
                return skipped, None, EndOfStream(f"{self.id}: {limit} frames taken")
            try:
                frame = self.capture.get(timeout=0.0)
            except SourceTimeout:
                break
            except BaseException as exc:  # noqa: BLE001 - EndOfStream, or the source's failure
                self.ended = True
                return skipped, None, exc
            self.taken += 1
            self.reserved += 1
            frame = replace(frame, stream=self.id)
            assert self.policy is not None
            resized = frame.size != self.size
            self.size = frame.size
            if self.policy.due(frame.pts, force=resized):
                return skipped, frame, None
            skipped.append(FrameResult(frame, inferred=False))
        return skipped, None, None

    def deliver(self, result: FrameResult) -> None:
        """A finished inference (or a skipped frame), in frame order. Never waits: ``take`` left room."""
        self.reserved -= 1
        self._inbox.put(result, timeout=0.0)

    def end(self, error: BaseException) -> None:
        """No more frames: ``EndOfStream`` for a clean end, else why the source (or the engine) failed."""
        self.ended = True
        if not self._end_sent:
            self._end_sent = True
            self._inbox.finish(error, timeout=0.0)  # the spare slot is always free for it

    # -- the post thread -----------------------------------------------------------------------

    def _post_loop(self) -> None:
        error: BaseException | None = None
        try:
            for result in self._inbox.drain():  # the inbox stops with the stream (halt)
                result = self.post.finish(result, self.capture.status)
                while not self._halt.is_set() and not self._results.put(result, timeout=POLL):
                    pass  # the caller is behind: wait, but stay stoppable
        except BaseException as exc:  # noqa: BLE001 - reported as this stream's failure; the others go on
            error = exc
        self._finalise(error)

    def _finalise(self, error: BaseException | None) -> None:
        halted = self._halt.is_set()
        self._halt.set()  # the batcher takes no more from it
        try:
            self.capture.stop(timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - the source's own close failing is no reason to lose the outputs
            log.warning("%s: closing the source failed: %s", self.id, exc)
        failed = error is not None or self._failed_run.is_set()
        kept, errors = self.post.close_sinks(failed)
        self.kept.extend(kept)
        if error is None and errors:
            error = errors[0]
        self.error = error
        self.stats.source = self.capture.status
        self.state = ("failed" if error is not None else "ended" if not halted
                      else "removed" if self._removed else "stopped")
        if error is not None:
            log.error("stream %s failed: %s", self.id, error)
        self.done.set()
