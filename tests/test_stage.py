"""The one bounded-queue hop: lossless waits, latest drops and counts, the end and errors reach the consumer."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from segengine.errors import ConfigError, EndOfStream
from segengine.stage import Stage


def test_lossless_keeps_every_item_in_order_and_the_producer_waits() -> None:
    stage: Stage[int] = Stage("t", maxsize=2)
    got: list[int] = []

    def produce() -> None:
        for i in range(50):
            assert stage.put(i)
        stage.finish(EndOfStream("done"))

    producer = threading.Thread(target=produce)
    producer.start()
    with pytest.raises(EndOfStream, match="done"):
        while True:
            got.append(stage.get(timeout=1.0))
            time.sleep(0.001)  # a slower consumer: the producer must wait, not drop
    producer.join(1)
    assert got == list(range(50)) and stage.dropped == 0
    with pytest.raises(EndOfStream):  # the end is raised again, not waited for
        stage.get(timeout=0)


def test_latest_never_waits_drops_the_oldest_and_counts() -> None:
    stage: Stage[int] = Stage("t", maxsize=3, policy="latest")
    start = time.monotonic()
    for i in range(100):
        assert stage.put(i)
    assert time.monotonic() - start < 0.5
    assert [stage.get(0.1) for _ in range(3)] == [97, 98, 99] and stage.dropped == 97


def test_the_end_marker_waits_for_room_and_is_not_dropped() -> None:
    stage: Stage[int] = Stage("t", maxsize=1, policy="latest")
    stage.put(1)
    threading.Timer(0.1, lambda: stage.get(0.5)).start()
    assert stage.finish(EndOfStream("end"))  # waited until the consumer took the item
    with pytest.raises(EndOfStream):
        stage.get(1.0)


def test_an_error_is_raised_in_the_consumer_as_the_same_object() -> None:
    stage: Stage[int] = Stage("t")
    error = OSError("disk on fire")
    stage.put(1)
    stage.finish(error)
    assert stage.get(0.1) == 1
    with pytest.raises(OSError) as caught:
        stage.get(0.1)
    assert caught.value is error


def test_a_stopped_hop_never_blocks() -> None:
    stop = threading.Event()
    stage: Stage[int] = Stage("t", maxsize=1, stop=stop)
    assert stage.put(1)
    threading.Timer(0.1, stop.set).start()
    start = time.monotonic()
    assert stage.put(2) is False and stage.finish(EndOfStream("x")) is False
    assert time.monotonic() - start < 1.0
    with pytest.raises(queue.Empty):
        Stage("t").get(timeout=0.05)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least one item"):
        Stage("t", maxsize=0)
    with pytest.raises(ConfigError, match="'lossless' or 'latest'"):
        Stage("t", policy="fastest")  # type: ignore[arg-type]
