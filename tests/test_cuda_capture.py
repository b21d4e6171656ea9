"""CUDA graph capture as trtexec does it, on host stand-ins for cuda-python and torch (no GPU here).

cuda-python: the runtime enqueues once directly, the stream is drained, then the capture begins
(thread-local); after a failed capture the partial graph is destroyed and the last error cleared, so
the next frame runs directly. torch: ``torch.cuda.graph`` is asked for the thread-local mode. These
prove the call order only; whether TensorRT's engines capture on a GPU is benchmarks/gpu_check.py's job.
"""

from __future__ import annotations

import numpy as np
import pytest

from segengine.backends.streamed import IOSpec, StreamedRuntime, TensorSpec
from tests.cudart_standin import FakeCudart, SumEngine, install

SHAPE = (1, 4, 6, 3)
SPEC = IOSpec(TensorSpec("frame", SHAPE, np.dtype(np.uint8)), (TensorSpec("total", (1, 3), np.dtype(np.float32)),))
BEGIN = "cudaStreamBeginCapture(cudaStreamCaptureModeThreadLocal)"


def _run(monkeypatch, *, capturable: bool = True, fail_instantiate: bool = False, frames: int = 3):
    cudart = FakeCudart()
    cudart.fail_instantiate = fail_instantiate
    module = install(monkeypatch, cudart)
    memory = module.CudaPythonMemory()
    runtime = StreamedRuntime(memory, SPEC, SumEngine(cudart, SHAPE, capturable=capturable), depth=1)
    totals = [runtime.infer(np.full(SHAPE[1:], v, np.uint8))["total"][0, 0] for v in range(1, frames + 1)]
    report = runtime.graph_report()
    runtime.close()
    memory.close()
    assert memory.ledger.live == 0
    return cudart, runtime, report, totals


def test_capture_follows_enqueue_then_sync_then_thread_local_capture(monkeypatch) -> None:
    cudart, runtime, report, totals = _run(monkeypatch)
    assert totals == [24.0, 48.0, 72.0]  # frames 2 and 3 ran the captured graph
    assert cudart.calls[:6] == ["enqueue", "cudaStreamSynchronize", BEGIN, "enqueue", "cudaStreamEndCapture",
                                "cudaGraphInstantiate"]
    assert cudart.calls.count("cudaGraphLaunch") == 2 and "cudaGetLastError" not in cudart.calls
    assert runtime.graphs_used and report == "CUDA graph captured on 1 of 1 lanes"


def test_a_failed_capture_clears_the_error_and_the_next_frames_run_directly(monkeypatch) -> None:
    cudart, runtime, report, totals = _run(monkeypatch, capturable=False)
    assert totals == [24.0, 48.0, 72.0]  # without the cleared error, frame 2's enqueue would fail
    assert cudart.calls[:6] == ["enqueue", "cudaStreamSynchronize", BEGIN, "enqueue", "cudaStreamEndCapture",
                                "cudaGetLastError"]
    assert "cudaGraphLaunch" not in cudart.calls and "cudaGraphInstantiate" not in cudart.calls
    assert not runtime.graphs_used and "captured on 0 of 1 lanes" in report
    assert "the work failed while capturing: TensorRT execute_async_v3 failed" in report


def test_a_graph_that_does_not_instantiate_is_destroyed_and_the_error_cleared(monkeypatch) -> None:
    cudart, runtime, report, totals = _run(monkeypatch, fail_instantiate=True)
    assert totals == [24.0, 48.0, 72.0]
    assert cudart.calls[4:8] == ["cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphDestroy",
                                 "cudaGetLastError"]
    assert "cudaGraphInstantiate: cudaErrorMemoryAllocation" in report


def test_work_that_fails_without_invalidating_the_capture_has_its_graph_destroyed(monkeypatch) -> None:
    cudart = FakeCudart()
    memory = install(monkeypatch, cudart).CudaPythonMemory()
    stream = memory.stream()

    def refuse() -> None:
        raise RuntimeError("TensorRT said no")

    assert memory.capture(stream, refuse) is None
    assert cudart.calls == ["cudaStreamSynchronize", BEGIN, "cudaStreamEndCapture", "cudaGraphDestroy",
                            "cudaGetLastError"]
    assert memory.capture_error == "the work failed while capturing: TensorRT said no"
    memory.close()


def test_a_capture_that_cannot_begin_runs_nothing_and_clears_the_error(monkeypatch) -> None:
    cudart = FakeCudart()
    cudart.fail_begin = True
    memory = install(monkeypatch, cudart).CudaPythonMemory()
    ran: list[int] = []
    assert memory.capture(memory.stream(), lambda: ran.append(1)) is None
    assert ran == [] and cudart.calls == ["cudaStreamSynchronize", BEGIN, "cudaGetLastError"]
    assert memory.capture_error == "cudaStreamBeginCapture: cudaErrorStreamCaptureUnsupported"
    memory.close()


def test_torch_captures_thread_locally(monkeypatch) -> None:
    import torch

    from segengine.backends.cuda import torch_cuda

    seen: list[dict] = []

    class Graph:
        pass

    class Capture:
        def __init__(self, graph, **kwargs) -> None:
            seen.append(kwargs)

        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    memory = object.__new__(torch_cuda.TorchCudaMemory)  # no CUDA here: only capture() is exercised
    stream = type("S", (), {"obj": "stream"})()
    ran: list[int] = []
    assert memory.capture(stream, lambda: ran.append(1)) is not None
    assert seen == [{"stream": "stream", "capture_error_mode": "thread_local"}] and ran == [1]

    def refuse() -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    assert memory.capture(stream, refuse) is None
    assert memory.capture_error == "RuntimeError: operation not permitted when stream is capturing"


def test_host_memory_says_why_it_captures_nothing() -> None:
    from segengine.backends.cuda.host import HostMemory
    from tests.test_buffers import SPEC as BUFFER_SPEC
    from tests.test_buffers import SumExecutor, frames

    memory = HostMemory()
    runtime = StreamedRuntime(memory, BUFFER_SPEC, SumExecutor(memory), depth=1)
    assert runtime.graph_report() == "no frame run yet: nothing captured"
    runtime.infer(frames(1)[0])
    assert runtime.graph_report() == ("CUDA graph captured on 0 of 1 lanes; not captured: "
                                      "the host implementation has no CUDA graphs")
    runtime.close()
    off = StreamedRuntime(memory, BUFFER_SPEC, SumExecutor(memory), depth=1, cuda_graphs=False)
    assert off.graph_report() == "CUDA graphs off (cuda_graphs=False)"
    off.close()


@pytest.fixture(autouse=True)
def _forget_the_stand_in_module():
    yield
    import sys

    import segengine.backends.cuda as cuda_package

    sys.modules.pop("segengine.backends.cuda.cuda_python", None)
    if "cuda_python" in vars(cuda_package):
        delattr(cuda_package, "cuda_python")
