"""One read at a time on a handle (an FFmpeg container, an OpenCV capture) that another thread
may close while a read is blocked inside the library.

Releasing a handle under a running read crashes the library, so close() waits a little for
the read to finish; when the read is slow (a network or driver wait), close() returns and
the read releases the handle itself on its way out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from segengine.errors import SourceError

CLOSE_WAIT_S = 1.0  # a decode step takes milliseconds; longer means a blocked network or driver read


class ReadGuard:
    def __init__(self, name: Callable[[], str], release: Callable[[], None]) -> None:
        self._name, self._release = name, release
        self._lock = threading.Lock()
        self.closed = False

    @contextmanager
    def reading(self, timeout: float) -> Iterator[None]:
        """The body runs alone; raises SourceError when closed or another read holds on too long."""
        if not self._lock.acquire(timeout=max(timeout, CLOSE_WAIT_S)):
            raise SourceError(f"{self._name()}: another read is still in progress")
        try:
            if self.closed:
                raise SourceError(f"{self._name()}: source is closed")
            yield
        finally:
            if self.closed:  # close() gave up waiting for this read: finish its job
                self._release()
            self._lock.release()

    def close(self) -> None:
        """Idempotent and safe from any thread; bounded by CLOSE_WAIT_S."""
        self.closed = True
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            return  # the read in progress sees `closed` and releases the handle itself
        try:
            self._release()
        finally:
            self._lock.release()
