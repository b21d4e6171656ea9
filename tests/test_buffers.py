"""The ring of pinned frame slots and the double-buffered runtime, on the host memory implementation.

``HostMemory(deferred=True)`` runs queued copies and compute only when something waits for
them, as a GPU runs behind the host: reusing a slot or a lane too early shows up here as wrong
numbers, the way it would on a GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from segengine.backends.buffers import SlotRing, State
from segengine.backends.cuda import Buffer, open_memory
from segengine.backends.cuda.host import HostMemory, HostStream
from segengine.backends.streamed import IOSpec, StreamedRuntime, TensorSpec
from segengine.errors import BackendError

SHAPE = (1, 4, 6, 3)
SPEC = IOSpec(TensorSpec("frame", SHAPE, np.dtype(np.uint8)),
              (TensorSpec("total", (1, 3), np.dtype(np.float32)), TensorSpec("corner", (1, 2), np.dtype(np.uint8))))


class SumExecutor:
    """A stand-in for the engine: per-channel sums and two corner pixels, computed on the stream."""

    def __init__(self, memory: HostMemory) -> None:
        self.memory = memory
        self.bound: dict[str, int] = {}
        self.enqueued = 0

    def _array(self, ptr: int) -> Buffer:
        return next(b for b in self.memory.ledger.remaining() if b.ptr == ptr and b.where == "device")

    def bind(self, name: str, ptr: int) -> None:
        self.bound[name] = ptr

    def enqueue(self, stream: HostStream) -> None:
        self.enqueued += 1
        frame = self._array(self.bound["frame"]).view(np.uint8, SHAPE)
        total = self._array(self.bound["total"]).view(np.float32, (1, 3))
        corner = self._array(self.bound["corner"]).view(np.uint8, (1, 2))

        def compute() -> None:
            total[...] = frame.reshape(-1, 3).sum(axis=0, dtype=np.float32)
            corner[0] = frame[0, 0, 0, 0], frame[0, -1, -1, 2]

        stream.enqueue(compute)


def expected(frame: np.ndarray) -> dict[str, np.ndarray]:
    return {"total": frame.reshape(-1, 3).sum(axis=0, dtype=np.float32)[None],
            "corner": np.array([[frame[0, 0, 0], frame[-1, -1, 2]]], np.uint8)}


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, SHAPE[1:], dtype=np.uint8) for _ in range(count)]


# -- the ring ----------------------------------------------------------------------------------


def test_a_slot_is_never_handed_out_twice() -> None:
    memory = HostMemory()
    with SlotRing(memory, (2, 2, 3), count=3) as ring:
        slots = [ring.acquire(timeout=0.1) for _ in range(3)]
        assert sorted(s.index for s in slots) == [0, 1, 2]
        with pytest.raises(BackendError, match="no free frame slot"):
            ring.acquire(timeout=0.05)
        ring.release(slots[1])
        again = ring.acquire(timeout=0.1)
        assert again.index == 1 and ring.states() == [State.FILLING] * 3


def test_a_released_handle_is_spent() -> None:
    with SlotRing(HostMemory(), (2, 2, 3), count=2) as ring:
        slot = ring.acquire(timeout=0.1)
        ring.release(slot)
        with pytest.raises(BackendError, match="already released"):
            ring.release(slot)
        with pytest.raises(BackendError, match="already released"):
            ring.publish(slot)
        fresh = ring.acquire(timeout=0.1)
        ring.publish(fresh)
        with pytest.raises(BackendError, match="already released"):  # the writer gave it to the reader
            ring.release(fresh)
        taken = ring.take(timeout=0.1)
        with pytest.raises(BackendError, match="in flight, expected filling"):
            ring.publish(taken)


def test_a_slot_whose_copy_is_in_flight_is_not_overwritten() -> None:
    memory = HostMemory(deferred=True)
    stream, event = memory.stream(), memory.event()
    device = memory.device(12)
    with SlotRing(memory, (2, 2, 3), count=1) as ring:
        slot = ring.acquire(timeout=0.1)
        slot.array[...] = 7
        memory.to_device(device, slot.buffer, 12, stream)
        event.record(stream)
        ring.release(slot, after=event)
        assert ring.states() == [State.PENDING] and not event.query()
        assert (device.array[:12] == 0).all()  # the "GPU" has not copied yet
        reused = ring.acquire(timeout=0.1)  # must wait for the copy before handing the memory out
        assert event.query() and (device.array[:12] == 7).all()
        reused.array[...] = 9
        assert (device.array[:12] == 7).all()


def test_free_slots_go_before_slots_waiting_for_their_copy() -> None:
    memory = HostMemory(deferred=True)
    stream, event = memory.stream(), memory.event()
    with SlotRing(memory, (1,), count=2) as ring:
        first = ring.acquire(timeout=0.1)
        memory.to_device(memory.device(1), first.buffer, 1, stream)
        event.record(stream)
        ring.release(first, after=event)
        assert ring.acquire(timeout=0.1).index != first.index
        assert not event.query()  # nobody had to wait for the copy


def test_writer_and_reader_threads_get_frames_in_order() -> None:
    ring = SlotRing(HostMemory(), (3,), count=2)
    got: list[int] = []

    def read() -> None:
        for _ in range(50):
            slot = ring.take(timeout=5)
            got.append(int(slot.array[0]))
            ring.release(slot)

    reader = threading.Thread(target=read)
    reader.start()
    for value in range(50):
        slot = ring.acquire(timeout=5)
        slot.array[:] = value
        ring.publish(slot)
    reader.join(timeout=10)
    ring.close()
    assert got == list(range(50))


def test_close_frees_every_slot_once_and_refuses_use_after() -> None:
    memory = HostMemory(deferred=True)
    ring = SlotRing(memory, (8,), count=3)
    stream, event = memory.stream(), memory.event()
    slot = ring.acquire(timeout=0.1)
    target = memory.device(8)
    slot.array[:] = 5
    memory.to_device(target, slot.buffer, 8, stream)
    event.record(stream)
    ring.release(slot, after=event)
    ring.close()
    assert event.query() and (target.array[:8] == 5).all()  # close waited for the copy before freeing
    assert memory.ledger.released == 3 and memory.ledger.live == 1  # only `target` is left
    ring.close()
    assert memory.ledger.released == 3
    with pytest.raises(BackendError, match="closed"):
        ring.acquire(timeout=0.1)
    with pytest.raises(BackendError, match="freed twice"):
        memory.free(ring._buffers[0])
    memory.close()
    assert memory.ledger.live == 0


# -- the double-buffered runtime ---------------------------------------------------------------


def test_outputs_belong_to_their_own_frame_with_two_in_flight() -> None:
    memory = HostMemory(deferred=True)
    runtime = StreamedRuntime(memory, SPEC, SumExecutor(memory), depth=2)
    inputs = frames(7)
    results = []
    runtime.submit(inputs[0])
    for frame in inputs[1:]:
        runtime.submit(frame)  # N+1 queued before N is collected: the overlap
        assert runtime.in_flight == 2
        results.append(runtime.collect())
    results.append(runtime.collect())
    for frame, result in zip(inputs, results):
        for name, want in expected(frame).items():
            np.testing.assert_array_equal(result[name], want)
    runtime.close()


def test_results_are_the_callers_own_arrays() -> None:
    memory = HostMemory(deferred=True)
    runtime = StreamedRuntime(memory, SPEC, SumExecutor(memory), depth=2)
    a, b, c = frames(3)
    first = runtime.infer(a)
    runtime.infer(b)
    runtime.infer(c)  # lane 0 is reused: the first result must not change
    np.testing.assert_array_equal(first["total"], expected(a)["total"])
    runtime.close()


def test_runtime_refuses_misuse_with_a_reason() -> None:
    memory = HostMemory()
    runtime = StreamedRuntime(memory, SPEC, SumExecutor(memory), depth=1)
    with pytest.raises(BackendError, match="nothing submitted"):
        runtime.collect()
    with pytest.raises(BackendError, match=r"frame of shape \(5, 6, 3\).*--frame-size"):
        runtime.submit(np.zeros((5, 6, 3), np.uint8))
    runtime.submit(frames(1)[0])
    with pytest.raises(BackendError, match="already in flight"):
        runtime.submit(frames(1)[0])
    runtime.close()
    with pytest.raises(BackendError, match="closed"):
        runtime.infer(frames(1)[0])


def test_runtime_allocates_once_and_close_frees_everything() -> None:
    memory = HostMemory(deferred=True)
    runtime = StreamedRuntime(memory, SPEC, SumExecutor(memory), depth=2)
    allocated = memory.ledger.allocated
    assert allocated == 2 + 2 + 2 * 1 + 2 * 2  # slots, device outputs, device inputs, pinned outputs
    for frame in frames(5):
        runtime.infer(frame)
    assert memory.ledger.allocated == allocated  # nothing per frame
    runtime.submit(frames(1)[0])  # still in flight at close
    runtime.close()
    runtime.close()
    assert memory.ledger.live == 0 and memory.ledger.released == allocated


class GraphMemory(HostMemory):
    """Host memory that "captures" work: the graph replays what was captured, with the bindings of then."""

    def __init__(self) -> None:
        super().__init__(deferred=True)
        self.captured = 0

    def capture(self, stream, work):  # type: ignore[override]
        self.captured += 1
        snapshot = dict(self._executor.bound)

        class Replay:
            def launch(inner, stream) -> None:  # noqa: N805
                saved = dict(self._executor.bound)
                self._executor.bound.update(snapshot)
                work()
                self._executor.bound.update(saved)

        return Replay()


def test_cuda_graphs_are_captured_per_lane_and_replay_the_right_buffers() -> None:
    memory = GraphMemory()
    executor = SumExecutor(memory)
    memory._executor = executor
    runtime = StreamedRuntime(memory, SPEC, executor, depth=2)
    inputs = frames(6)
    runtime.submit(inputs[0])
    results = []
    for frame in inputs[1:]:
        runtime.submit(frame)
        results.append(runtime.collect())
    results.append(runtime.collect())
    assert memory.captured == 2 and runtime.graphs_used
    for frame, result in zip(inputs, results):
        np.testing.assert_array_equal(result["total"], expected(frame)["total"])
    runtime.close()


def test_without_a_gpu_open_memory_says_what_to_install() -> None:
    with pytest.raises(BackendError, match="cuda-python"):
        open_memory("auto")
    assert open_memory("host").kind == "host"
