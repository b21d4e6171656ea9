"""Torch backend: runs the preset's graph as a torch module, on CUDA when torch has it.

On CUDA the frame goes through a pinned staging buffer and a preallocated device input on the
backend's own stream, and the outputs come back through pinned buffers: after the first frame
of a size nothing is allocated per frame but the arrays handed to the caller. (The CUDA path is
written against torch's documented API and not run in this project's CI, which has no GPU.)

On the CPU, subnormal floats are flushed to zero while the graph runs, as on the other CPU
backends (x86 computes them in slow microcode, and TwinLiteNet's activations are full of them).
The flag is per thread: it is set around each call and cleared after, so the caller's own
arithmetic keeps IEEE behaviour; torch's worker threads, started inside the first call, keep it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from segengine.backends.base import BackendInfo, BackendOptions
from segengine.backends.probe import GpuEnvironment
from segengine.errors import BackendError
from segengine.graph.spec import GraphSpec


class TorchBackend(BackendInfo):
    name: ClassVar[str] = "torch"
    graph_format: ClassVar[str] = "torch"

    def __init__(self, graph: torch.nn.Module, spec: GraphSpec, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        self.check_precision(options)
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.spec = spec
        self._graph: torch.nn.Module | None = graph.eval().to(self.device)
        self.output_names = list(spec.tensor_names)
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(device=self.device) if cuda else None
        self._done = torch.cuda.Event() if cuda else None
        self._staging: torch.Tensor | None = None  # pinned host, the frame batch's shape
        self._device_input: torch.Tensor | None = None
        self._host_outputs: list[torch.Tensor] | None = None  # pinned, the outputs' shapes

    @classmethod
    def speed(cls, env: GpuEnvironment, models: tuple[str, ...] = ()) -> int:
        return 20 if env.cuda_device is not None else 0  # on the CPU, ONNX Runtime runs the same graph faster

    @classmethod
    def where(cls, env: GpuEnvironment) -> str:
        return (f"torch on CUDA GPU {env.cuda_device}" if env.cuda_device is not None
                else f"torch on the CPU ({env.no_gpu_reason()})")

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        if self._graph is None:
            raise BackendError("backend is closed")
        batch = frame if frame.ndim == 4 else frame[None]
        self.spec.check_batch(len(batch))  # the module itself would run any batch
        if self._stream is None:
            torch.set_flush_denormal(True)
            try:
                with torch.inference_mode():
                    outputs = self._graph(torch.from_numpy(np.ascontiguousarray(batch)))
            finally:
                torch.set_flush_denormal(False)  # every thread's default: the caller's maths is untouched
            return {name: t.numpy() for name, t in zip(self.output_names, outputs)}
        return self._infer_cuda(batch)

    def _infer_cuda(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self._graph is not None and self._stream is not None and self._done is not None
        if self._staging is None or tuple(self._staging.shape) != batch.shape:
            self._staging = torch.empty(batch.shape, dtype=torch.uint8, pin_memory=True)
            self._device_input = torch.empty(batch.shape, dtype=torch.uint8, device=self.device)
            self._host_outputs = None
        assert self._device_input is not None
        np.copyto(self._staging.numpy(), batch)  # the previous frame's copy finished: infer synchronised
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            self._device_input.copy_(self._staging, non_blocking=True)
            outputs = self._graph(self._device_input)
            if self._host_outputs is None:
                self._host_outputs = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outputs]
            for host, out in zip(self._host_outputs, outputs):
                host.copy_(out, non_blocking=True)
            self._done.record(self._stream)
        self._done.synchronize()
        # Copies: the pinned buffers are reused by the next frame, the caller keeps these.
        return {name: t.numpy().copy() for name, t in zip(self.output_names, self._host_outputs)}

    def close(self) -> None:
        self._graph = None
        self._staging = self._device_input = self._host_outputs = None
        if self.device.type == "cuda":
            if self._stream is not None:
                self._stream.synchronize()
            torch.cuda.empty_cache()
