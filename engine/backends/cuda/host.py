"""The host implementation of the memory interface: numpy arrays, streams as queues of work.

It exists so that everything around the GPU (slot ownership, double buffering, event order)
is tested on a CPU. With ``deferred=True`` nothing queued on a stream runs until something
waits for it (an event's ``synchronize``, a stream's, or a stream waiting on an event), the
way a GPU runs behind the host: a runtime that overwrites a slot still in flight, or reads
an output before its copy finished, then gets wrong numbers in the tests, as it would on a GPU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from segengine.backends.cuda import Buffer, GpuInfo, Ledger
from segengine.errors import BackendError


class HostStream:
    def __init__(self, deferred: bool) -> None:
        self.deferred = deferred
        self.handle = 0  # no CUDA stream behind it
        self._work: deque[Callable[[], None]] = deque()
        self.executed = 0  # how many queued items ran, so events know where they stand
        self.queued = 0

    def enqueue(self, work: Callable[[], None]) -> None:
        self.queued += 1
        if self.deferred:
            self._work.append(work)
        else:
            work()
            self.executed += 1

    def run_until(self, position: int) -> None:
        while self.executed < position:
            work = self._work.popleft()
            work()
            self.executed += 1

    def synchronize(self) -> None:
        self.run_until(self.queued)


class HostEvent:
    def __init__(self) -> None:
        self._stream: HostStream | None = None
        self._position = 0

    def record(self, stream: HostStream) -> None:  # type: ignore[override]
        self._stream, self._position = stream, stream.queued

    def query(self) -> bool:
        return self._stream is None or self._stream.executed >= self._position

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.run_until(self._position)


class HostMemory:
    """Numpy "pinned" and "device" buffers; copies are ``np.copyto`` queued on host streams."""

    kind = "host"

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self.ledger = Ledger()
        self._closed = False
        self.capture_error: str | None = None

    def gpu(self) -> GpuInfo:
        return GpuInfo("host (numpy)", "0.0")

    def _alloc(self, nbytes: int, where: str) -> Buffer:
        if self._closed:
            raise BackendError("memory is closed")
        array = np.zeros(max(int(nbytes), 1), np.uint8)
        return self.ledger.add(Buffer(array.ctypes.data, int(nbytes), where, array=array))

    def pinned(self, nbytes: int) -> Buffer:
        return self._alloc(nbytes, "pinned")

    def device(self, nbytes: int) -> Buffer:
        # Host "device" buffers keep a view, so that test executors can compute on them.
        return self._alloc(nbytes, "device")

    def stream(self) -> HostStream:
        return HostStream(self.deferred)

    def event(self) -> HostEvent:
        return HostEvent()

    def _copy(self, dst: Buffer, src: Buffer, nbytes: int, stream: HostStream) -> None:
        if nbytes > dst.nbytes or nbytes > src.nbytes:
            raise BackendError(f"copy of {nbytes} bytes overruns a buffer ({src.nbytes} → {dst.nbytes})")
        d, s = dst.array, src.array
        assert d is not None and s is not None
        stream.enqueue(lambda: np.copyto(d[:nbytes], s[:nbytes]))

    def to_device(self, dst: Buffer, src: Buffer, nbytes: int, stream: HostStream) -> None:  # type: ignore[override]
        self._copy(dst, src, nbytes, stream)

    def to_host(self, dst: Buffer, src: Buffer, nbytes: int, stream: HostStream) -> None:  # type: ignore[override]
        self._copy(dst, src, nbytes, stream)

    def wait(self, stream: HostStream, event: HostEvent) -> None:  # type: ignore[override]
        # Like cudaStreamWaitEvent: waits for the event as recorded now, not as re-recorded later.
        other, position = event._stream, event._position
        if other is not None:
            stream.enqueue(lambda: other.run_until(position))

    def capture(self, stream: HostStream, work: Callable[[], None]) -> None:  # type: ignore[override]
        self.capture_error = "the host implementation has no CUDA graphs"
        return None  # the runtime launches the work directly

    def free(self, buffer: Buffer) -> None:
        self.ledger.take(buffer)

    def close(self) -> None:
        if self._closed:
            return
        for buffer in self.ledger.remaining():
            self.ledger.take(buffer)
        self._closed = True
