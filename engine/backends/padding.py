"""Partial batches on an engine of one fixed batch size: rows padded up to it, outputs cut back.

A TensorRT engine built with a batch profile 1..B runs here at B always: one set of pinned
buffers and one captured CUDA graph, allocated once, instead of a set per batch size. A batch of
fewer frames is padded with zero rows (their compute is the cost; on a GPU a partial batch costs
about as much as a full one anyway) and only its own rows come back.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from segengine.errors import BackendError


class BatchPadder:
    def __init__(self, batch: int, frame_shape: tuple[int, ...]) -> None:
        self.batch = batch
        self._buffer = np.zeros((batch, *frame_shape), np.uint8)  # reused: the runtime copies it on submit
        self._rows: deque[int] = deque()  # rows of each call submitted, not yet collected, oldest first

    def pad(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` (n×H×W×3, or one H×W×3) as a full batch; remembers n for :meth:`cut`."""
        frames = frames[None] if frames.ndim == 3 else frames
        n = len(frames)
        if not 1 <= n <= self.batch:
            raise BackendError(f"the engine runs 1 to {self.batch} frames a call, not {n}")
        self._rows.append(n)
        if n == self.batch:
            return frames
        self._buffer[:n] = frames
        self._buffer[n:] = 0  # no stale frame in the padding: its rows are thrown away, but stay inert
        return self._buffer

    def cut(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The oldest call's outputs, its own rows only."""
        n = self._rows.popleft()
        return outputs if n == self.batch else {name: array[:n] for name, array in outputs.items()}
