"""Reads a source on its own thread into a small bounded queue (a :class:`~segengine.stage.Stage`).

The queue policy follows the source: files and folders are ``lossless`` (the reader waits for
the consumer, so no frame is lost), live sources are ``latest`` (the reader never waits; the
oldest queued frame is dropped and counted, so the consumer always sees recent frames).
Every wait is a short timed wait that re-checks the stop event, so ``stop()`` always works,
even while the reader is parked on a full queue.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from types import TracebackType

from segengine.capture.base import Source, SourceStatus, SourceTimeout
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.stage import POLL, Policy, Stage
from segengine.types import Frame


class CaptureThread:
    """``get()`` hands frames to one consumer; end states are exceptions, like ``Source.read``."""

    def __init__(self, source: Source, *, queue_size: int = 4, read_timeout: float = 1.0,
                 policy: Policy | None = None, ready: threading.Event | None = None) -> None:
        """``policy``: the queue's, whatever the source says (None: latest if it is live, else lossless).
        ``ready``: set whenever a frame (or the end) is queued, for a consumer of several threads."""
        if not read_timeout > 0:
            raise ConfigError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        self._source = source
        self._read_timeout = read_timeout
        self._policy = policy
        self._stage: Stage[Frame] = Stage(f"capture {source.info.name}", maxsize=queue_size,
                                          policy=policy or ("latest" if source.info.live else "lossless"),
                                          ready=ready)
        self._thread = threading.Thread(target=self._run, name=f"capture:{source.info.name}", daemon=True)
        self._outcome: BaseException | None = None  # set by the reader before it exits
        self.frames_read = 0  # written by the reader only

    # --- consumer side -------------------------------------------------------------------

    @property
    def policy(self) -> str:
        return self._stage.policy

    @property
    def dropped(self) -> int:
        return self._stage.dropped

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def status(self) -> SourceStatus:
        """The source's health with this thread's drop count; safe to read from any thread."""
        return replace(self._source.status, dropped=self.dropped)

    def get(self, timeout: float) -> Frame:
        """The next frame; raises EndOfStream after the last one, the source's own exception if
        it failed, or SourceTimeout if nothing came within ``timeout`` seconds."""
        if self._thread.ident is None:
            raise SourceError("CaptureThread.get() before start(); call start() or use `with`")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._stage.get(timeout=min(remaining, POLL))
            except queue.Empty:
                pass
            if not self._thread.is_alive() and self._stage.empty():
                # Stopped before it could queue its end marker (lossless queue was full).
                raise self._stage.abandon(self._outcome or self._stopped())
            if remaining <= 0:
                raise SourceTimeout(f"{self._source.info.name}: no frame within {timeout:.3f} s")

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop reading, close the source (this unblocks a pending read) and join the thread.
        Returns whether the thread ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self._stage.stop.set()
        try:
            self._source.close()
        finally:
            if self._thread.ident is not None:
                self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def __enter__(self) -> CaptureThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- reader side ---------------------------------------------------------------------

    def _run(self) -> None:
        stop = self._stage.stop
        try:
            self._source.open()
            # Some sources learn whether they are live only by connecting (HTTP: a file or a feed).
            self._stage.policy = self._policy or ("latest" if self._source.info.live else "lossless")
            while not stop.is_set():
                try:
                    frame = self._source.read(self._read_timeout)
                except SourceTimeout:
                    continue  # a live source may recover; the consumer has its own timeout
                self.frames_read += 1
                self._stage.put(frame)
            outcome: BaseException = self._stopped()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            # A read that fails because stop() closed the source is the stop, not a fault.
            outcome = self._stopped() if stop.is_set() else exc
        try:
            self._source.close()  # release the file/device as soon as reading ends
        except Exception as exc:  # noqa: BLE001
            if isinstance(outcome, EndOfStream) and not stop.is_set():
                outcome = exc  # a clean end whose close failed is a failure; else keep the first error
        self._outcome = outcome
        self._stage.finish(outcome)  # the end marker is never dropped

    def _stopped(self) -> EndOfStream:
        return EndOfStream(f"{self._source.info.name}: capture stopped")
