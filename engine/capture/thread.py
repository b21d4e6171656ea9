"""Reads a source on its own thread into a small bounded queue.

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
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal

from segengine.capture.base import Source, SourceStatus, SourceTimeout
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame

_POLL_S = 0.05  # the longest any wait goes without re-checking stop / thread liveness


@dataclass(frozen=True)
class _End:
    """The last item a reader queues: why it ended (EndOfStream, or the source's own error)."""

    error: BaseException


class CaptureThread:
    """``get()`` hands frames to one consumer; end states are exceptions, like ``Source.read``."""

    def __init__(self, source: Source, *, queue_size: int = 4, read_timeout: float = 1.0) -> None:
        if queue_size < 1:
            raise ConfigError(f"queue_size must be >= 1, got {queue_size}")
        if not read_timeout > 0:
            raise ConfigError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        self._source = source
        self._read_timeout = read_timeout
        self.policy: Literal["lossless", "latest"] = "latest" if source.info.live else "lossless"
        self._queue: queue.Queue[Frame | _End] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture:{source.info.name}", daemon=True)
        self._outcome: BaseException | None = None  # set by the reader before it exits
        self._done: BaseException | None = None  # what get() raised last; raised again after the end
        self.frames_read = 0  # written by the reader only
        self.dropped = 0  # written by the reader only

    # --- consumer side -------------------------------------------------------------------

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
        if self._done is not None:
            raise self._done
        if self._thread.ident is None:
            raise SourceError("CaptureThread.get() before start(); call start() or use `with`")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.0, min(remaining, _POLL_S)))
            except queue.Empty:
                item = None
            if isinstance(item, _End):
                self._done = item.error
                raise self._done  # the source's own exception object, with its traceback and cause
            if item is not None:
                return item
            if not self._thread.is_alive() and self._queue.empty():
                # Stopped before it could queue its end marker (lossless queue was full).
                self._done = self._outcome or self._stopped()
                raise self._done
            if remaining <= 0:
                raise SourceTimeout(f"{self._source.info.name}: no frame within {timeout:.3f} s")

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop reading, close the source (this unblocks a pending read) and join the thread.
        Returns whether the thread ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self._stop.set()
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
        try:
            self._source.open()
            # Some sources learn whether they are live only by connecting (HTTP: a file or a feed).
            self.policy = "latest" if self._source.info.live else "lossless"
            while not self._stop.is_set():
                try:
                    frame = self._source.read(self._read_timeout)
                except SourceTimeout:
                    continue  # a live source may recover; the consumer has its own timeout
                self.frames_read += 1
                if self.policy == "lossless":
                    self._put_waiting(frame)
                else:
                    self._put_dropping(frame)
            outcome: BaseException = self._stopped()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, never swallowed
            # A read that fails because stop() closed the source is the stop, not a fault.
            outcome = self._stopped() if self._stop.is_set() else exc
        try:
            self._source.close()  # release the file/device as soon as reading ends
        except Exception as exc:  # noqa: BLE001
            if isinstance(outcome, EndOfStream) and not self._stop.is_set():
                outcome = exc  # a clean end whose close failed is a failure; else keep the first error
        self._outcome = outcome
        self._put_waiting(_End(outcome))  # the end marker is never dropped

    def _stopped(self) -> EndOfStream:
        return EndOfStream(f"{self._source.info.name}: capture stopped")

    def _put_waiting(self, item: Frame | _End) -> bool:
        """Lossless: wait for room in short slices; give up only when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _put_dropping(self, frame: Frame) -> None:
        """Latest: never wait; make room by dropping the oldest queued frame."""
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # only frames are queued until the end marker
                    self.dropped += 1
                except queue.Empty:
                    pass  # the consumer took one meanwhile: there is room now
