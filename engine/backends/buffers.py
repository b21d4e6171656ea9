"""A ring of page-locked host slots with explicit ownership.

Frames are written into pinned slots (DMA-able, so the copy to the GPU is truly async) that
are allocated once. Each slot is always owned by exactly one party:

    FREE ──acquire──► FILLING ──publish──► READY ──take──► IN_FLIGHT ──release(after=event)──► PENDING ──► FREE
                         └──────────────── release (writer gives it back unused) ─────────────────────────┘

``acquire`` never hands out a slot that someone owns, and a slot released with an event (its
host-to-device copy) becomes FREE only once that event has completed, so a slot still being
read by a DMA is never overwritten. Handles carry a generation: a stale handle (kept after
``release``) is refused instead of silently aliasing the slot's next frame.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

from segengine.backends.cuda import Buffer, Event, Memory
from segengine.errors import BackendError


class State(Enum):
    FREE = "free"
    FILLING = "filling"
    READY = "ready"
    IN_FLIGHT = "in flight"
    PENDING = "pending"  # released, its copy not yet finished


@dataclass(frozen=True)
class Slot:
    """A handle on one slot for one use; ``array`` is the frame-shaped view into pinned memory."""

    index: int
    generation: int
    buffer: Buffer
    array: np.ndarray


class SlotRing:
    """``count`` pinned slots for frames of ``shape`` × ``dtype``, allocated here, freed in ``close``."""

    def __init__(self, memory: Memory, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8,
                 count: int = 3) -> None:
        if count < 1:
            raise BackendError(f"a slot ring needs at least one slot, not {count}")
        self.memory, self.shape, self.dtype = memory, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._buffers = [memory.pinned(self.nbytes) for _ in range(count)]
        self._state = [State.FREE] * count
        self._generation = [0] * count
        self._after: list[Event | None] = [None] * count
        self._ready: deque[int] = deque()
        self._pending: deque[int] = deque()
        self._lock = threading.Condition()
        self._closed = False

    @property
    def count(self) -> int:
        return len(self._buffers)

    def states(self) -> list[State]:
        with self._lock:
            return list(self._state)

    # -- the writer ----------------------------------------------------------------------------

    def acquire(self, timeout: float) -> Slot:
        """A FREE slot for writing, waiting up to ``timeout`` s for one to come back."""
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                self._check_open()
                index = self._free_index()
                if index is not None:
                    return self._hand_out(index, State.FILLING)
                left = end - time.monotonic()
                if left <= 0:
                    owners = ", ".join(f"{i}: {s.value}" for i, s in enumerate(self._state))
                    raise BackendError(f"no free frame slot within {timeout:.2f} s (slots {owners}); "
                                       "a consumer is not releasing them")
                self._lock.wait(min(left, 0.05))  # short: pending copies finish without a notify

    def publish(self, slot: Slot) -> None:
        """The writer has filled ``slot``: it becomes READY for ``take``, in publication order."""
        with self._lock:
            self._expect(slot, State.FILLING)
            self._state[slot.index] = State.READY
            self._generation[slot.index] += 1  # the writer's handle is spent: the reader gets a new one
            self._ready.append(slot.index)
            self._lock.notify_all()

    # -- the reader ----------------------------------------------------------------------------

    def take(self, timeout: float) -> Slot:
        """The oldest READY slot, now IN_FLIGHT (owned by the reader until ``release``)."""
        end = time.monotonic() + timeout
        with self._lock:
            while not self._ready:
                self._check_open()
                left = end - time.monotonic()
                if left <= 0:
                    raise BackendError(f"no filled frame slot within {timeout:.2f} s")
                self._lock.wait(left)
            self._check_open()
            return self._hand_out(self._ready.popleft(), State.IN_FLIGHT)

    def release(self, slot: Slot, after: Event | None = None) -> None:
        """Give ``slot`` back; with ``after`` (e.g. its host-to-device copy) it is reused only once that completed."""
        with self._lock:
            self._expect(slot, State.FILLING, State.IN_FLIGHT)
            self._generation[slot.index] += 1  # the handle is spent from now on
            if after is None or after.query():
                self._state[slot.index] = State.FREE
            else:
                self._state[slot.index] = State.PENDING
                self._after[slot.index] = after
                self._pending.append(slot.index)
            self._lock.notify_all()

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for pending copies, then free every slot's memory, once. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for index in self._pending:
                event = self._after[index]
                if event is not None:
                    event.synchronize()  # a DMA may still read this memory
            self._pending.clear()
            for buffer in self._buffers:
                self.memory.free(buffer)
            self._lock.notify_all()

    def __enter__(self) -> SlotRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside --------------------------------------------------------------------------------

    def _free_index(self) -> int | None:
        for index, state in enumerate(self._state):
            if state is State.FREE:
                return index
        # Only pending slots: the oldest whose copy completed, else wait for the oldest copy.
        for index in list(self._pending):
            event = self._after[index]
            if event is None or event.query():
                self._reclaim(index)
                return index
        if self._pending:
            index = self._pending[0]
            event = self._after[index]
            assert event is not None
            event.synchronize()  # bounded: a copy of one frame
            self._reclaim(index)
            return index
        return None

    def _reclaim(self, index: int) -> None:
        self._pending.remove(index)
        self._after[index] = None
        self._state[index] = State.FREE

    def _hand_out(self, index: int, state: State) -> Slot:
        self._state[index] = state
        buffer = self._buffers[index]
        return Slot(index, self._generation[index], buffer, buffer.view(self.dtype, self.shape))

    def _expect(self, slot: Slot, *states: State) -> None:
        self._check_open()
        if not 0 <= slot.index < len(self._buffers) or self._buffers[slot.index] is not slot.buffer:
            raise BackendError(f"slot {slot.index} does not belong to this ring")
        if slot.generation != self._generation[slot.index]:
            raise BackendError(f"slot {slot.index}: this handle was already released; acquire a new one")
        if self._state[slot.index] not in states:
            raise BackendError(f"slot {slot.index} is {self._state[slot.index].value}, "
                               f"expected {' or '.join(s.value for s in states)}")

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the frame slot ring is closed")
