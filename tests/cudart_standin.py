"""A host stand-in for cuda-python's ``cudart`` with the documented ``(error, *values)`` calls.

Memory is numpy on the host, copies run at once, and a stream being captured records the "kernels"
launched on it instead of running them. Like CUDA, an error is kept as the last error until
``cudaGetLastError`` clears it, and the stand-in TensorRT enqueue below refuses to run while one is
pending (TensorRT checks for launch errors after its kernels), so a runtime that forgets to clear the
error after a failed capture fails its next frame here as it would on a GPU. ``calls`` keeps the order.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from collections.abc import Callable

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNotReady = 600
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


OK = cudaError_t.cudaSuccess


class FakeCudart:
    cudaError_t, cudaStreamCaptureMode, cudaMemcpyKind = cudaError_t, cudaStreamCaptureMode, cudaMemcpyKind
    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2
    cudaHostAllocDefault = 0

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.last_error = OK
        self.capturing: dict[int, list[Callable[[], None]] | None] = {}  # None: the capture was invalidated
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self._memory: dict[int, np.ndarray] = {}
        self._next = 1
        self.fail_instantiate = False
        self.fail_begin = False

    def _handle(self) -> int:
        self._next += 1
        return self._next

    def _log(self, name: str) -> None:
        self.calls.append(name)

    # -- device, memory, streams, events ------------------------------------------------------------
    def cudaGetDeviceCount(self):
        return OK, 1

    def cudaSetDevice(self, device):
        return (OK,)

    def cudaGetErrorName(self, error):
        return OK, cudaError_t(error).name.encode()

    def cudaGetLastError(self):
        self._log("cudaGetLastError")
        error, self.last_error = self.last_error, OK
        return (error,)

    def _alloc(self, nbytes: int):
        array = np.zeros(nbytes, np.uint8)
        self._memory[array.ctypes.data] = array
        return OK, array.ctypes.data

    def cudaHostAlloc(self, nbytes, flags):
        return self._alloc(nbytes)

    def cudaMalloc(self, nbytes):
        return self._alloc(nbytes)

    def cudaFreeHost(self, ptr):
        self._memory.pop(ptr)
        return (OK,)

    cudaFree = cudaFreeHost

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.launch(stream, lambda: ctypes.memmove(dst, src, nbytes))
        return (OK,)

    def cudaStreamCreateWithFlags(self, flags):
        return OK, self._handle()

    def cudaStreamSynchronize(self, stream):
        self._log("cudaStreamSynchronize")
        return (OK,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        return (OK,)

    def cudaStreamDestroy(self, stream):
        return (OK,)

    def cudaEventCreateWithFlags(self, flags):
        return OK, self._handle()

    def cudaEventRecord(self, event, stream):
        return (OK,)

    def cudaEventQuery(self, event):
        return (OK,)

    def cudaEventSynchronize(self, event):
        return (OK,)

    def cudaEventDestroy(self, event):
        return (OK,)

    def cudaDeviceSynchronize(self):
        return (OK,)

    # -- work and graphs ----------------------------------------------------------------------------
    def launch(self, stream: int, work: Callable[[], None]) -> None:
        """A kernel or copy on ``stream``: run now, or recorded while the stream is capturing."""
        if stream in self.capturing:
            if self.capturing[stream] is not None:
                self.capturing[stream].append(work)  # type: ignore[union-attr]
        else:
            work()

    def unsupported_while_capturing(self, stream: int) -> None:
        """What an operation graphs cannot hold does: the capture is invalidated, the error kept."""
        self.capturing[stream] = None
        self.last_error = cudaError_t.cudaErrorStreamCaptureUnsupported

    def cudaStreamBeginCapture(self, stream, mode):
        self._log(f"cudaStreamBeginCapture({cudaStreamCaptureMode(mode).name})")
        if self.fail_begin:  # e.g. the legacy default stream, which cannot be captured
            self.last_error = cudaError_t.cudaErrorStreamCaptureUnsupported
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        self.capturing[stream] = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        self._log("cudaStreamEndCapture")
        recorded = self.capturing.pop(stream)
        if recorded is None:
            self.last_error = cudaError_t.cudaErrorStreamCaptureInvalidated
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        graph = self._handle()
        self.graphs[graph] = recorded
        return OK, graph

    def cudaGraphInstantiate(self, graph, flags):
        self._log("cudaGraphInstantiate")
        if self.fail_instantiate:
            self.last_error = cudaError_t.cudaErrorMemoryAllocation
            return cudaError_t.cudaErrorMemoryAllocation, None
        return OK, graph

    def cudaGraphLaunch(self, exec_, stream):
        self._log("cudaGraphLaunch")
        for work in self.graphs[exec_]:
            self.launch(stream, work)
        return (OK,)

    def cudaGraphDestroy(self, graph):
        self._log("cudaGraphDestroy")
        return (OK,)

    def cudaGraphExecDestroy(self, exec_):
        return (OK,)


def install(monkeypatch, cudart: FakeCudart) -> types.ModuleType:
    """``cuda.bindings.runtime`` → ``cudart`` in sys.modules; returns a fresh segengine ``cuda_python`` module."""
    import importlib

    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.delitem(sys.modules, "segengine.backends.cuda.cuda_python", raising=False)
    return importlib.import_module("segengine.backends.cuda.cuda_python")


class SumEngine:
    """A stand-in TensorRT context: per-channel sums of a uint8 frame, as kernels on the stream.
    ``capturable=False`` makes it do something graphs cannot hold while its stream is captured."""

    def __init__(self, cudart: FakeCudart, shape: tuple[int, ...], *, capturable: bool = True) -> None:
        self.cudart, self.shape, self.capturable = cudart, shape, capturable
        self.bound: dict[str, int] = {}

    def bind(self, name: str, ptr: int) -> None:
        self.bound[name] = ptr

    def enqueue(self, stream) -> None:
        from segengine.errors import BackendError

        self.cudart.calls.append("enqueue")
        if self.cudart.last_error != OK:  # TensorRT's launch check sees the error left behind
            raise BackendError(f"TensorRT execute_async_v3 failed ({self.cudart.last_error.name} pending)")
        if stream.handle in self.cudart.capturing and not self.capturable:
            self.cudart.unsupported_while_capturing(stream.handle)
            raise BackendError("TensorRT execute_async_v3 failed")
        frame_ptr, total_ptr, count = self.bound["frame"], self.bound["total"], int(np.prod(self.shape))

        def kernel() -> None:
            frame = np.ctypeslib.as_array((ctypes.c_uint8 * count).from_address(frame_ptr)).reshape(-1, 3)
            total = np.ctypeslib.as_array((ctypes.c_float * 3).from_address(total_ptr))
            total[...] = frame.sum(0)

        self.cudart.launch(stream.handle, kernel)
