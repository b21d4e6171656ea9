"""Any sink on its own thread, behind the same bounded-queue stage as every other hop.

``latest`` suits a view (a window, a live page): a slow viewer drops frames and never slows the
engine. ``lossless`` suits a file on a slow disk: the engine waits only when the queue is full.
The worker's error surfaces on the next ``write`` or on ``close``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from segengine.errors import EndOfStream, SinkError
from segengine.sinks.base import Sink, finish
from segengine.stage import POLL, Policy, Stage
from segengine.types import FrameResult


class ThreadedSink:
    def __init__(self, sink: Sink, *, policy: Policy = "latest", queue_size: int = 2, deadline: float = 5.0) -> None:
        self.sink = sink
        self.deadline = deadline
        self._stage: Stage[FrameResult] = Stage(f"sink {type(sink).__name__}", maxsize=queue_size, policy=policy)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"sink:{type(sink).__name__}", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._stage.dropped

    def write(self, result: FrameResult) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise SinkError(f"{type(self.sink).__name__} on its own thread is already closed")
        self._stage.put(result)

    def close(self) -> None:
        """Everything queued is written, then the sink is finalised, within ``deadline`` seconds. A sink
        still stuck in a write by then is left alone (never closed under its writer) and said so."""
        self._finish(failed=False)

    def abort(self) -> Path | None:
        """As ``close``, but the run failed: the sink keeps its output beside its target (``Sink.abort``)."""
        return self._finish(failed=True)

    def _finish(self, failed: bool) -> Path | None:
        if self._closed:
            return None
        self._closed = True
        end = time.monotonic() + self.deadline
        if self._stage.finish(EndOfStream("closed"), timeout=self.deadline):
            self._thread.join(max(0.0, end - time.monotonic()))
        self._stage.stop.set()
        self._thread.join(POLL * 4)
        if self._thread.is_alive():
            raise SinkError(f"{type(self.sink).__name__} did not finish writing within {self.deadline:g} s; "
                            "it was not finalised and its output may be incomplete")
        kept = finish(self.sink, failed or self._error is not None)
        if self._error is not None:
            raise self._error
        return kept

    def _run(self) -> None:
        for result in self._stage.drain():
            try:
                self.sink.write(result)
            except BaseException as exc:  # noqa: BLE001 - raised in the producer's thread
                self._error = exc
                self._stage.stop.set()
                return
