"""Memory, streams and events behind one small interface, with three implementations.

The runtime and the ring of frame slots speak only this interface, so the same code runs on
``torch`` (where torch has CUDA), on ``cuda-python`` (Jetson images without a CUDA torch) and
on ``host`` (plain numpy, synchronous or deferred), which is how the CPU tests reach every
line of the buffer ownership and double-buffering logic without a GPU.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from segengine.errors import BackendError

KINDS = ("torch", "cuda-python", "host")


@dataclass(frozen=True)
class GpuInfo:
    """What the engine cache keys on: the device's name and compute capability."""

    name: str
    compute_capability: str  # "8.9"; "0.0" for the host implementation
    total_memory: int = 0


@dataclass(eq=False)
class Buffer:
    """One allocation. ``array`` is a uint8 view for host memory (pinned or not), else None."""

    ptr: int
    nbytes: int
    where: str  # "pinned", "device" or "host"
    array: np.ndarray | None = None
    handle: object = field(default=None, repr=False)  # what keeps the memory alive (tensor, ...)
    freed: bool = False

    def view(self, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the first bytes of a host buffer as ``dtype`` × ``shape`` (no copy)."""
        if self.array is None:
            raise BackendError(f"a {self.where} buffer has no host view")
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if count > self.nbytes:
            raise BackendError(f"view of {count} bytes does not fit a buffer of {self.nbytes}")
        return self.array[:count].view(dtype).reshape(shape)


@runtime_checkable
class Stream(Protocol):
    handle: int  # what TensorRT's execute_async_v3 takes

    def synchronize(self) -> None: ...


@runtime_checkable
class Event(Protocol):
    def record(self, stream: Stream) -> None: ...

    def query(self) -> bool:
        """True when everything before the last ``record`` has finished."""
        ...

    def synchronize(self) -> None: ...


@runtime_checkable
class Graph(Protocol):
    def launch(self, stream: Stream) -> None: ...


@runtime_checkable
class Memory(Protocol):
    """Allocate once, copy asynchronously on streams, order streams with events, free once."""

    kind: str

    def gpu(self) -> GpuInfo: ...

    def pinned(self, nbytes: int) -> Buffer:
        """Page-locked host memory (DMA-able: async copies really are async)."""
        ...

    def device(self, nbytes: int) -> Buffer: ...

    def stream(self) -> Stream: ...

    def event(self) -> Event: ...

    def to_device(self, dst: Buffer, src: Buffer, nbytes: int, stream: Stream) -> None: ...

    def to_host(self, dst: Buffer, src: Buffer, nbytes: int, stream: Stream) -> None: ...

    def wait(self, stream: Stream, event: Event) -> None:
        """Work queued on ``stream`` after this call starts after ``event`` completes."""
        ...

    def capture(self, stream: Stream, work: Callable[[], None]) -> Graph | None:
        """``work`` captured as a CUDA graph on ``stream`` (the caller ran it once directly before);
        None where it cannot be, with the reason in the implementation's ``capture_error``."""
        ...

    def free(self, buffer: Buffer) -> None:
        """Release ``buffer``; a second free is an error (it would be a double free in CUDA)."""
        ...

    def close(self) -> None:
        """Free every buffer still allocated; idempotent."""
        ...


class Ledger:
    """Tracks live allocations so that free happens exactly once and close frees the rest."""

    def __init__(self) -> None:
        self._live: dict[int, Buffer] = {}
        self.allocated = 0  # counts, for tests and leak reports
        self.released = 0

    def add(self, buffer: Buffer) -> Buffer:
        self._live[id(buffer)] = buffer
        self.allocated += 1
        return buffer

    def take(self, buffer: Buffer) -> None:
        if buffer.freed or self._live.pop(id(buffer), None) is None:
            raise BackendError(f"{buffer.where} buffer at {buffer.ptr:#x} freed twice or not from this allocator")
        buffer.freed = True
        self.released += 1

    def remaining(self) -> list[Buffer]:
        return list(self._live.values())

    @property
    def live(self) -> int:
        return len(self._live)


def available() -> dict[str, str]:
    """Which implementations can run here → why (or why not), without initialising CUDA twice."""
    out: dict[str, str] = {"host": "numpy, no GPU (tests, and the CPU reference)"}
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            out["torch"] = f"torch {torch.__version__} with CUDA {torch.version.cuda}"
    from segengine.backends import probe

    version = probe.cuda_python_version()  # package metadata: a bare `cuda` namespace is not cuda-python
    if version is not None:
        out["cuda-python"] = f"cuda-python {version} is installed"
    return out


def open_memory(kind: str = "auto") -> Memory:
    """``torch`` when torch has CUDA, else ``cuda-python``; ``host`` only when asked for."""
    if kind == "host":
        from segengine.backends.cuda.host import HostMemory

        return HostMemory()
    have = available()
    order = ("torch", "cuda-python") if kind == "auto" else (kind,)
    if kind not in ("auto", *KINDS):
        raise BackendError(f"unknown memory implementation {kind!r}; choose auto, {', '.join(KINDS)}")
    for name in order:
        if name in have:
            if name == "torch":
                from segengine.backends.cuda.torch_cuda import TorchCudaMemory

                return TorchCudaMemory()
            from segengine.backends.cuda.cuda_python import CudaPythonMemory

            return CudaPythonMemory()
    raise BackendError("no CUDA memory implementation: install a CUDA build of torch (`pip install torch`) "
                       "or cuda-python (`pip install cuda-python`) on a machine with an NVIDIA GPU and driver")
