"""``start`` / ``stop`` / ``close(failed)`` as a context manager, for the pipelines.

``with p:`` starts; leaving it closes, with ``failed`` when an exception is on its way out (file sinks
then keep their partial outputs beside their targets). A start that fails closes at once, since
``__exit__`` will not run for it.
"""

from __future__ import annotations

import threading
from typing import TypeVar

L = TypeVar("L", bound="Lifecycle")  # typing.Self is 3.11+


class Lifecycle:
    _stop: threading.Event

    def start(self: L) -> L:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask every stage to stop; returns at once."""
        self._stop.set()

    def __enter__(self: L) -> L:
        try:
            return self.start()
        except BaseException:
            self.close(failed=True)
            raise

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)
