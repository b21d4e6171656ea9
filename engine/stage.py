"""One hop between two threads: a bounded queue with a stated policy, a stop event and error forwarding.

- ``lossless`` (files, image folders): ``put`` waits for room, so nothing is lost.
- ``latest`` (cameras, RTSP, a live view): ``put`` never waits; the oldest queued item is dropped
  and counted, so the consumer always sees recent items.

The producer ends the hop with ``finish(error)``: ``EndOfStream`` for a clean end, or the exception
that stopped it, which ``get`` raises in the consumer's thread (the same object, traceback and
all). Every wait is a short timed wait that re-checks the stop event, so a stopped hop never
blocks anyone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from segengine.errors import ConfigError, EndOfStream

T = TypeVar("T")
Policy = Literal["lossless", "latest"]
POLL = 0.05  # the longest any wait goes without re-checking the stop event


@dataclass(frozen=True)
class _Finished:
    error: BaseException


class Stage(Generic[T]):
    def __init__(self, name: str, *, maxsize: int = 4, policy: Policy = "lossless",
                 stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
        if maxsize < 1:
            raise ConfigError(f"{name}: the queue needs room for at least one item, got maxsize={maxsize}")
        if policy not in ("lossless", "latest"):
            raise ConfigError(f"{name}: policy must be 'lossless' or 'latest', got {policy!r}")
        self.name = name
        self.policy: Policy = policy  # may change once, before the first put (a source that learns it is live)
        self.stop = stop or threading.Event()
        self.dropped = 0  # written by the producer only
        # Set after every put: one consumer of several hops waits on one event (the batcher).
        self.ready = ready
        self._queue: queue.Queue[T | _Finished] = queue.Queue(maxsize=maxsize)
        self._done: BaseException | None = None  # what get() raised at the end; raised again after

    # -- producer side ------------------------------------------------------------------------

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Hand ``item`` on by the policy; False when the hop was stopped before it could (or, lossless,
        no room came within ``timeout`` seconds)."""
        if self.policy == "latest":
            self._put_dropping(item)
            return True
        return self._put_waiting(item, timeout)

    def finish(self, error: BaseException, timeout: float | None = None) -> bool:
        """The last item: the consumer's ``get`` raises ``error``. Never dropped; waits for room
        until stopped or ``timeout`` seconds (False then)."""
        return self._put_waiting(_Finished(error), timeout)

    def _put_waiting(self, item: T | _Finished, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop.is_set():
            wait = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
            try:
                self._queue.put(item, timeout=wait)  # tried once even when the time is up (timeout 0)
            except queue.Full:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            if self.ready is not None:
                self.ready.set()
            return True
        return False

    def _put_dropping(self, item: T) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                if self.ready is not None:
                    self.ready.set()
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # only items are queued until the end marker
                    self.dropped += 1
                except queue.Empty:
                    pass  # the consumer took one meanwhile: there is room now

    # -- consumer side ------------------------------------------------------------------------

    def get(self, timeout: float) -> T:
        """The next item; raises the producer's end (``finish``) once it comes, and every time after,
        or ``queue.Empty`` when nothing came within ``timeout`` seconds."""
        if self._done is not None:
            raise self._done
        item = self._queue.get(timeout=max(0.0, timeout)) if timeout > 0 else self._queue.get_nowait()
        if isinstance(item, _Finished):
            self._done = item.error
            raise self._done
        return item

    def drain(self) -> Iterator[T]:
        """Every item as it comes, until the producer's clean end (``EndOfStream``) or the stop event;
        the producer's error is raised. The one consumer loop, so no consumer can wait unstoppably."""
        while not self.stop.is_set():
            try:
                item = self.get(timeout=POLL)
            except queue.Empty:
                continue
            except EndOfStream:
                return
            yield item

    def abandon(self, error: BaseException) -> BaseException:
        """End the hop on the consumer's side (its producer died before it could finish it)."""
        self._done = self._done or error
        return self._done

    def empty(self) -> bool:
        return self._queue.empty()

    def room(self) -> int:
        """Items that can be put now without waiting or dropping (exact for the only producer)."""
        return self._queue.maxsize - self._queue.qsize()
