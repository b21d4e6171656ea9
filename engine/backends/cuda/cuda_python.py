"""The memory interface on NVIDIA's cuda-python runtime bindings (Jetson images without a CUDA torch).

Written against cuda-python's documented ``cudart`` API (every call returns ``(error, *values)``);
not run in this project's CI, which has no GPU.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from segengine.backends.cuda import Buffer, GpuInfo, Ledger
from segengine.errors import BackendError

try:  # cuda-python 12.6+ moved the bindings; older releases keep `cuda.cudart`
    from cuda.bindings import runtime as cudart
except ImportError:  # pragma: no cover - depends on the installed release
    from cuda import cudart  # type: ignore[no-redef]


def _name(error: object) -> str:
    _, name = cudart.cudaGetErrorName(error)
    return name.decode() if isinstance(name, bytes) else str(name)


def _check(result: tuple) -> object:
    """cudart calls return (error, *values): raise on error, return the value(s)."""
    error, *values = result
    if int(error) != 0:
        raise BackendError(f"CUDA error {_name(error)}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


class CudaStream:
    def __init__(self) -> None:
        self.obj = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.handle = int(self.obj)

    def synchronize(self) -> None:
        _check(cudart.cudaStreamSynchronize(self.obj))


class CudaEvent:
    def __init__(self) -> None:
        self.obj = _check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))

    def record(self, stream: CudaStream) -> None:  # type: ignore[override]
        _check(cudart.cudaEventRecord(self.obj, stream.obj))

    def query(self) -> bool:
        (error,) = cudart.cudaEventQuery(self.obj)
        if error == cudart.cudaError_t.cudaErrorNotReady:
            return False
        _check((error,))
        return True

    def synchronize(self) -> None:
        _check(cudart.cudaEventSynchronize(self.obj))


class CudaGraph:
    def __init__(self, graph: object, exec_: object) -> None:
        self.graph, self.exec_ = graph, exec_

    def launch(self, stream: CudaStream) -> None:  # type: ignore[override]
        _check(cudart.cudaGraphLaunch(self.exec_, stream.obj))


class CudaPythonMemory:
    kind = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        count = _check(cudart.cudaGetDeviceCount())
        if not count:
            raise BackendError("cuda-python finds no CUDA device (is the NVIDIA driver loaded?)")
        _check(cudart.cudaSetDevice(device))
        self._device = device
        self.ledger = Ledger()
        self._graphs: list[CudaGraph] = []
        self._streams: list[CudaStream] = []  # destroyed in close(), with the events
        self._events: list[CudaEvent] = []
        self._closed = False
        self.capture_error: str | None = None  # why the last capture() gave no graph

    def gpu(self) -> GpuInfo:
        props = _check(cudart.cudaGetDeviceProperties(self._device))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.rstrip("\x00"), f"{props.major}.{props.minor}", int(props.totalGlobalMem))

    def pinned(self, nbytes: int) -> Buffer:
        ptr = int(_check(cudart.cudaHostAlloc(max(nbytes, 1), cudart.cudaHostAllocDefault)))
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        return self.ledger.add(Buffer(ptr, nbytes, "pinned", array=np.frombuffer(raw, np.uint8)))

    def device(self, nbytes: int) -> Buffer:
        ptr = int(_check(cudart.cudaMalloc(max(nbytes, 1))))
        return self.ledger.add(Buffer(ptr, nbytes, "device"))

    def stream(self) -> CudaStream:
        stream = CudaStream()
        self._streams.append(stream)
        return stream

    def event(self) -> CudaEvent:
        event = CudaEvent()
        self._events.append(event)
        return event

    def to_device(self, dst: Buffer, src: Buffer, nbytes: int, stream: CudaStream) -> None:  # type: ignore[override]
        _check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                      stream.obj))

    def to_host(self, dst: Buffer, src: Buffer, nbytes: int, stream: CudaStream) -> None:  # type: ignore[override]
        _check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                      stream.obj))

    def wait(self, stream: CudaStream, event: CudaEvent) -> None:  # type: ignore[override]
        _check(cudart.cudaStreamWaitEvent(stream.obj, event.obj, 0))

    def capture(self, stream: CudaStream, work: Callable[[], None]) -> CudaGraph | None:  # type: ignore[override]
        """trtexec's sequence: the caller has run ``work`` once directly (TensorRT allocates on its first
        enqueue); the stream is drained, then ``work`` is captured thread-locally (other threads may use
        CUDA meanwhile). Any failure ends the capture, destroys what it produced and clears CUDA's last
        error, so the next direct ``execute_async_v3`` does not inherit it; ``capture_error`` says why."""
        self.capture_error = None
        stream.synchronize()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # trtexec's mode too
        (error,) = cudart.cudaStreamBeginCapture(stream.obj, mode)
        if int(error) != 0:  # nothing began: nothing to end
            self._abandon(stream, f"cudaStreamBeginCapture: {_name(error)}", ended=True)
            return None
        try:
            work()
        except Exception as exc:  # e.g. execute_async_v3 returned False: the engine cannot be captured
            self._abandon(stream, f"the work failed while capturing: {exc}")
            return None
        error, graph = cudart.cudaStreamEndCapture(stream.obj)
        if int(error) != 0:  # invalidated (something in the work is not capturable): no graph came back
            self._abandon(stream, f"cudaStreamEndCapture: {_name(error)}", ended=True)
            return None
        error, exec_ = cudart.cudaGraphInstantiate(graph, 0)
        if int(error) != 0:
            cudart.cudaGraphDestroy(graph)  # cleaning up: its status must not hide the reason
            self._abandon(stream, f"cudaGraphInstantiate: {_name(error)}", ended=True)
            return None
        captured = CudaGraph(graph, exec_)
        self._graphs.append(captured)
        return captured

    def _abandon(self, stream: CudaStream, why: str, *, ended: bool = False) -> None:
        """End a failed capture (unless it has ended), drop its partial graph, clear the last error."""
        if not ended:
            error, graph = cudart.cudaStreamEndCapture(stream.obj)
            if int(error) == 0 and graph is not None and int(graph) != 0:  # TensorRT failed, the capture did not
                cudart.cudaGraphDestroy(graph)
        cudart.cudaGetLastError()  # the error a failed capture leaves would fail the next CUDA call
        self.capture_error = why

    def free(self, buffer: Buffer) -> None:
        self.ledger.take(buffer)
        buffer.array = None  # the view would point at freed memory
        _check(cudart.cudaFreeHost(buffer.ptr) if buffer.where == "pinned" else cudart.cudaFree(buffer.ptr))

    def close(self) -> None:
        if self._closed:
            return
        _check(cudart.cudaDeviceSynchronize())  # nothing may still read memory we give back
        for captured in self._graphs:
            _check(cudart.cudaGraphExecDestroy(captured.exec_))
            _check(cudart.cudaGraphDestroy(captured.graph))
        for buffer in self.ledger.remaining():
            self.free(buffer)
        for event in self._events:
            _check(cudart.cudaEventDestroy(event.obj))
        for stream in self._streams:
            _check(cudart.cudaStreamDestroy(stream.obj))
        self._closed = True
