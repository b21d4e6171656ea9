"""Torch backend: runs the preset's graph as a torch module, on CUDA when torch has it."""

from __future__ import annotations

import numpy as np
import torch

from engine.errors import BackendError
from engine.graph.compose import SegmentationGraph


class TorchBackend:
    name = "torch"

    def __init__(self, graph: SegmentationGraph, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._graph: SegmentationGraph | None = graph.eval().to(self.device)
        self.description = graph.describe()
        self.output_names = list(graph.output_names)

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        if self._graph is None:
            raise BackendError("backend is closed")
        batch = torch.from_numpy(np.ascontiguousarray(frame if frame.ndim == 4 else frame[None]))
        with torch.inference_mode():
            outputs = self._graph(batch.to(self.device, non_blocking=True))
        return {name: t.cpu().numpy() for name, t in zip(self.output_names, outputs)}

    def close(self) -> None:
        self._graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
