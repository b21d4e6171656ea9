"""Double-buffered execution of a compiled graph on CUDA streams, independent of who runs it.

Per frame: the frame is written into a pinned slot (the ring), copied to the device on the copy
stream, computed on the compute stream once the copy's event fires, and the compact outputs are
copied back into pinned output buffers; an event marks them ready. Two "lanes" (device input +
pinned outputs) alternate, so the copy of frame N+1 overlaps the compute of frame N when the
caller keeps one frame in flight (``submit`` ahead of ``collect``). Everything is allocated once
from the I/O spec in ``__init__`` and freed in ``close()``.

The executor is the only engine-specific part (TensorRT's context, or a test's numpy function).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from segengine.backends.buffers import SlotRing
from segengine.backends.cuda import Buffer, Event, Graph, Memory, Stream
from segengine.errors import BackendError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class IOSpec:
    """The engine's single input (the uint8 frame batch) and its outputs, at fixed shapes."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]


class Executor(Protocol):
    """Runs the compiled graph on a stream, reading and writing the bound device addresses."""

    def bind(self, name: str, ptr: int) -> None: ...

    def enqueue(self, stream: Stream) -> None: ...


@dataclass
class _Lane:
    device_input: Buffer
    host_outputs: dict[str, Buffer]
    copied: Event  # the input is on the device (the host slot may be reused)
    done: Event  # the outputs are in host_outputs
    graph: Graph | None = None
    used: bool = False


class StreamedRuntime:
    """``submit(frame)`` then ``collect()`` (FIFO), at most ``depth`` frames in flight; ``infer`` does both."""

    def __init__(self, memory: Memory, spec: IOSpec, executor: Executor, *, depth: int = 2,
                 cuda_graphs: bool = True) -> None:
        if depth < 1:
            raise BackendError(f"depth must be at least 1, not {depth}")
        self.memory, self.spec, self.executor, self.depth = memory, spec, executor, depth
        self._closed = False
        self._ring = SlotRing(memory, spec.input.shape, spec.input.dtype, count=depth)
        self._copy_stream, self._compute_stream = memory.stream(), memory.stream()
        # One set of device outputs is enough: the compute stream orders each frame's compute
        # after the previous frame's device-to-host copies.
        self._device_outputs = {o.name: memory.device(o.nbytes) for o in spec.outputs}
        self._lanes = [_Lane(memory.device(spec.input.nbytes), {o.name: memory.pinned(o.nbytes) for o in spec.outputs},
                             memory.event(), memory.event()) for _ in range(depth)]
        self._in_flight: deque[int] = deque()
        self._submitted = 0
        self._cuda_graphs = cuda_graphs
        self.graphs_used = False  # whether CUDA graphs were captured (the engine allowed it)
        self.graph_failures: list[str] = []  # why a lane's capture gave no graph, as the memory said

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def graph_report(self) -> str:
        """Whether each used lane runs a captured CUDA graph, and if not, why (for benchmarks and tests)."""
        if not self._cuda_graphs:
            return "CUDA graphs off (cuda_graphs=False)"
        used = [lane for lane in self._lanes if lane.used]
        if not used:
            return "no frame run yet: nothing captured"
        captured = sum(lane.graph is not None for lane in used)
        text = f"CUDA graph captured on {captured} of {len(used)} lanes"
        if self.graph_failures:
            text += f"; not captured: {'; '.join(dict.fromkeys(self.graph_failures))}"
        return text

    def submit(self, frame: np.ndarray) -> None:
        """Queue ``frame`` (the input's shape, or without its batch axis); returns before it is computed."""
        self._check_open()
        if len(self._in_flight) >= self.depth:
            raise BackendError(f"{self.depth} frames already in flight; collect() one first")
        want = self.spec.input.shape
        if frame.shape != want and (1, *frame.shape) != want:
            raise BackendError(f"frame of shape {frame.shape} for an engine built for {want}; "
                               "build the engine for this frame size (segengine build --frame-size)")
        index = self._submitted % self.depth
        lane = self._lanes[index]
        slot = self._ring.acquire(timeout=5.0)
        np.copyto(slot.array.reshape(frame.shape), frame, casting="no")
        # The lane's previous frame was collected (at most `depth` in flight, collected in order),
        # and collect() waited for its outputs, which come after its compute: its device input is free.
        self.memory.to_device(lane.device_input, slot.buffer, self.spec.input.nbytes, self._copy_stream)
        lane.copied.record(self._copy_stream)
        self._ring.release(slot, after=lane.copied)

        self.memory.wait(self._compute_stream, lane.copied)
        self._launch(lane)
        for out in self.spec.outputs:
            self.memory.to_host(lane.host_outputs[out.name], self._device_outputs[out.name], out.nbytes,
                                self._compute_stream)
        lane.done.record(self._compute_stream)
        lane.used = True
        self._in_flight.append(index)
        self._submitted += 1

    def collect(self) -> dict[str, np.ndarray]:
        """The outputs of the oldest submitted frame, as arrays the caller owns."""
        self._check_open()
        if not self._in_flight:
            raise BackendError("nothing submitted to collect")
        lane = self._lanes[self._in_flight.popleft()]
        lane.done.synchronize()
        # Copied out of the pinned buffers: the lane is reused two frames later, while the
        # caller may keep the result much longer (tracker, renderer).
        return {o.name: lane.host_outputs[o.name].view(o.dtype, o.shape).copy() for o in self.spec.outputs}

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        self.submit(frame)
        return self.collect()

    def close(self) -> None:
        """Wait for the streams, then free every buffer once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._copy_stream.synchronize()
        self._compute_stream.synchronize()
        self._in_flight.clear()
        self._ring.close()
        for buffer in self._device_outputs.values():
            self.memory.free(buffer)
        for lane in self._lanes:
            self.memory.free(lane.device_input)
            for buffer in lane.host_outputs.values():
                self.memory.free(buffer)

    def _launch(self, lane: _Lane) -> None:
        """Bind the lane's addresses and run the graph: first directly, then as a captured CUDA graph."""
        if lane.graph is not None:
            lane.graph.launch(self._compute_stream)
            return
        self.executor.bind(self.spec.input.name, lane.device_input.ptr)
        for name, buffer in self._device_outputs.items():
            self.executor.bind(name, buffer.ptr)
        self.executor.enqueue(self._compute_stream)
        if self._cuda_graphs and lane.used is False:
            # Captured after one direct run (TensorRT allocates lazily on its first enqueue); the
            # captured work is launched from the next frame of this lane on. Addresses are fixed
            # per lane, which is what a graph needs.
            lane.graph = self.memory.capture(self._compute_stream, lambda: self.executor.enqueue(self._compute_stream))
            self.graphs_used = self.graphs_used or lane.graph is not None
            if lane.graph is None:
                self.graph_failures.append(getattr(self.memory, "capture_error", None) or "no reason given")

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the runtime is closed")
