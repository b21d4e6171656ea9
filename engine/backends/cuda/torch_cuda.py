"""The memory interface on torch's CUDA runtime (where torch was built with CUDA).

Written against torch's documented API (pinned ``torch.empty``, ``torch.cuda.Stream``,
``torch.cuda.Event``, ``torch.cuda.CUDAGraph``); not run in this project's CI, which has no GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from segengine.backends.cuda import Buffer, GpuInfo, Ledger
from segengine.errors import BackendError


class TorchStream:
    def __init__(self, device: torch.device) -> None:
        self.obj = torch.cuda.Stream(device=device)
        self.handle = int(self.obj.cuda_stream)

    def synchronize(self) -> None:
        self.obj.synchronize()


class TorchEvent:
    def __init__(self) -> None:
        self.obj = torch.cuda.Event(enable_timing=False)

    def record(self, stream: TorchStream) -> None:  # type: ignore[override]
        self.obj.record(stream.obj)

    def query(self) -> bool:
        return bool(self.obj.query())

    def synchronize(self) -> None:
        self.obj.synchronize()


class TorchGraph:
    def __init__(self, graph: torch.cuda.CUDAGraph) -> None:
        self.obj = graph

    def launch(self, stream: TorchStream) -> None:  # type: ignore[override]
        with torch.cuda.stream(stream.obj):
            self.obj.replay()


class TorchCudaMemory:
    kind = "torch"

    def __init__(self, device: int = 0) -> None:
        if not torch.cuda.is_available():
            raise BackendError(f"torch {torch.__version__} has no CUDA device here; install a CUDA build "
                               "of torch on a machine with an NVIDIA GPU and driver")
        self.device_ = torch.device("cuda", device)
        self.ledger = Ledger()
        self._closed = False
        self.capture_error: str | None = None  # why the last capture() gave no graph

    def gpu(self) -> GpuInfo:
        props = torch.cuda.get_device_properties(self.device_)
        return GpuInfo(props.name, f"{props.major}.{props.minor}", int(props.total_memory))

    def pinned(self, nbytes: int) -> Buffer:
        tensor = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
        return self.ledger.add(Buffer(tensor.data_ptr(), nbytes, "pinned", array=tensor.numpy(), handle=tensor))

    def device(self, nbytes: int) -> Buffer:
        tensor = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device_)
        return self.ledger.add(Buffer(tensor.data_ptr(), nbytes, "device", handle=tensor))

    def stream(self) -> TorchStream:
        return TorchStream(self.device_)

    def event(self) -> TorchEvent:
        return TorchEvent()

    def _copy(self, dst: Buffer, src: Buffer, nbytes: int, stream: TorchStream) -> None:
        d, s = dst.handle, src.handle
        assert isinstance(d, torch.Tensor) and isinstance(s, torch.Tensor)
        with torch.cuda.stream(stream.obj):
            d[:nbytes].copy_(s[:nbytes], non_blocking=True)

    def to_device(self, dst: Buffer, src: Buffer, nbytes: int, stream: TorchStream) -> None:  # type: ignore[override]
        self._copy(dst, src, nbytes, stream)

    def to_host(self, dst: Buffer, src: Buffer, nbytes: int, stream: TorchStream) -> None:  # type: ignore[override]
        self._copy(dst, src, nbytes, stream)

    def wait(self, stream: TorchStream, event: TorchEvent) -> None:  # type: ignore[override]
        stream.obj.wait_event(event.obj)

    def capture(self, stream: TorchStream, work: Callable[[], None]) -> TorchGraph | None:  # type: ignore[override]
        """``work`` (already run once directly by the caller) captured on ``stream``; None with
        ``capture_error`` set where it cannot be. torch.cuda.graph synchronises the device first and
        clears CUDA's error after a failed end of capture (c10's checks do), as trtexec does."""
        self.capture_error = None
        graph = torch.cuda.CUDAGraph()
        try:
            # Work launched by others (TensorRT's enqueue) on the capturing stream is captured too.
            # "thread_local": only this thread is barred from unsafe CUDA calls while capturing; the
            # default "global" would fail other threads' allocations (torch backends, decoders) meanwhile.
            with torch.cuda.graph(graph, stream=stream.obj, capture_error_mode="thread_local"):
                work()
        except RuntimeError as exc:  # BackendError included: the engine cannot be captured
            self.capture_error = f"{type(exc).__name__}: {exc}"
            return None  # launched directly instead
        return TorchGraph(graph)

    def free(self, buffer: Buffer) -> None:
        self.ledger.take(buffer)
        buffer.handle = buffer.array = None  # the caching allocators take the memory back

    def close(self) -> None:
        if self._closed:
            return
        torch.cuda.synchronize(self.device_)  # nothing may still read memory we give back
        for buffer in self.ledger.remaining():
            self.free(buffer)
        self._closed = True
