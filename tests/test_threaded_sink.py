"""Any sink on its own thread (ThreadedSink): every result or the latest, errors surfaced, close bounded."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from segengine.errors import SinkError
from segengine.sinks.jsonl import JsonlSink, read_jsonl
from segengine.sinks.threaded import ThreadedSink
from segengine.types import FrameResult
from tests.factories import frame, result


class _Recording:
    """An inner sink that keeps the frame indices it was given and the threads it ran on; it can be
    slow (``delay`` a write), wait for a ``gate``, or raise ``error`` at frame ``fail_at``."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None, error: BaseException | None = None,
                 gate: threading.Event | None = None) -> None:
        self.delay, self.fail_at, self.error, self.gate = delay, fail_at, error, gate
        self.written: list[int] = []
        self.threads: set[int] = set()
        self.closed = 0

    def write(self, res: FrameResult) -> None:
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.delay)
        if res.frame.index == self.fail_at:
            assert self.error is not None
            raise self.error
        self.written.append(res.frame.index)

    def close(self) -> None:
        self.closed += 1


def _small(index: int) -> FrameResult:
    return result(image=frame(16, 16, index=index))


def _worker_gone(inner: _Recording) -> bool:
    return bool(inner.threads) and not any(t.ident in inner.threads for t in threading.enumerate())


def test_threaded_lossless_writes_every_result_in_order_then_closes(tmp_path: Path) -> None:
    inner = _Recording(delay=0.002)
    sink = ThreadedSink(inner, policy="lossless", queue_size=2)
    for i in range(40):
        sink.write(_small(i))
    sink.close()
    assert inner.written == list(range(40)) and sink.dropped == 0 and inner.closed == 1
    assert threading.get_ident() not in inner.threads and len(inner.threads) == 1  # on its own thread
    assert _worker_gone(inner)
    # A real sink behind it: every line, in order, the file finalised by close.
    jsonl = ThreadedSink(JsonlSink(tmp_path / "t.jsonl"), policy="lossless", queue_size=1)
    for i in range(10):
        jsonl.write(result(image=frame(index=i)))
    jsonl.close()
    records = list(read_jsonl(tmp_path / "t.jsonl"))
    assert [r["frame"] for r in records] == list(range(10)) and all(r["schema"] == 2 for r in records)
    with pytest.raises(SinkError, match="already closed"):
        jsonl.sink.write(result(image=frame(index=10)))


def test_threaded_latest_drops_for_a_slow_sink_and_never_blocks_the_producer() -> None:
    inner = _Recording(delay=0.2)  # 5 results a second
    sink = ThreadedSink(inner, policy="latest", queue_size=2)
    longest, start = 0.0, time.monotonic()
    for i in range(20):  # about 200 results a second
        t = time.perf_counter()
        sink.write(_small(i))
        longest = max(longest, time.perf_counter() - t)
        time.sleep(0.005)
    producer = time.monotonic() - start
    sink.close()
    assert longest < 0.1 and producer < 1.5  # never waits for the sink's 0.2 s writes (4 s if it did)
    assert sink.dropped > 0 and len(inner.written) + sink.dropped == 20  # each result written or counted
    assert inner.written == sorted(inner.written) and inner.written[-1] == 19  # the newest is never dropped
    assert inner.closed == 1 and _worker_gone(inner)


@pytest.mark.parametrize("policy", ["lossless", "latest"])
def test_threaded_sink_error_surfaces_on_a_later_write(policy: str) -> None:
    boom = SinkError("the disk went away")
    inner = _Recording(fail_at=2, error=boom)
    sink = ThreadedSink(inner, policy=policy, queue_size=4)
    for i in range(3):
        sink.write(_small(i))  # frame 2 fails on the sink's thread, not here
    give_up = time.monotonic() + 5.0
    with pytest.raises(SinkError, match="disk went away") as exc:
        for i in range(3, 10_000):
            sink.write(_small(i))
            time.sleep(0.005)
            if time.monotonic() > give_up:
                break
    assert exc.value is boom  # the worker's own exception, traceback and all
    assert inner.written == [0, 1]
    with pytest.raises(SinkError) as again:
        sink.close()
    assert again.value is boom and inner.closed == 1  # the inner sink is finalised all the same
    assert _worker_gone(inner)


def test_threaded_sink_error_surfaces_on_close() -> None:
    boom = OSError(errno.EIO, "input/output error")
    inner = _Recording(delay=0.01, fail_at=4, error=boom)
    sink = ThreadedSink(inner, policy="latest", queue_size=8)
    for i in range(5):
        sink.write(_small(i))  # the last one fails after the producer is done writing
    with pytest.raises(OSError, match="input/output error") as exc:
        sink.close()
    assert exc.value is boom and inner.written == [0, 1, 2, 3] and inner.closed == 1 and sink.dropped == 0


def test_threaded_close_is_bounded_by_its_deadline() -> None:
    inner = _Recording(delay=0.3)
    sink = ThreadedSink(inner, policy="lossless", queue_size=2, deadline=0.2)
    for i in range(3):
        sink.write(_small(i))  # one in the sink's hands, two queued
    start = time.monotonic()
    sink.close()
    took = time.monotonic() - start
    # ~0.6 s: room for the end marker (one write), the deadline, then the write in hand; not all 0.9 s
    # of what is queued, and nothing like forever.
    assert took < 1.5, took
    assert inner.closed == 1 and len(inner.written) < 3 and inner.written == sorted(inner.written)


def test_threaded_close_is_bounded_even_when_the_sink_hangs() -> None:
    gate = threading.Event()
    inner = _Recording(gate=gate)
    sink = ThreadedSink(inner, policy="lossless", queue_size=1, deadline=0.2)
    sink.write(_small(0))
    sink.write(_small(1))  # returns once the worker took frame 0 (and hangs in it): the queue is full
    raised: list[BaseException] = []

    def close() -> None:
        try:
            sink.close()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            raised.append(exc)

    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(2.0)
    hung = closer.is_alive()
    gate.set()  # let it go either way, so the test leaves no thread behind
    closer.join(5.0)
    assert not hung, "close did not return within 2 s (deadline 0.2 s)"
    assert len(raised) == 1 and "did not finish writing within 0.2 s" in str(raised[0])
    assert inner.closed == 0  # never finalised under its own writer
    with pytest.raises(SinkError, match="already closed"):
        sink.write(_small(2))
