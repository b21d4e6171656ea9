"""The torch backend on the CPU: subnormal floats are flushed while its graph runs, and only then."""

from __future__ import annotations

import numpy as np
import torch

from segengine.backends.base import BackendOptions
from segengine.backends.torch import TorchBackend
from tests.factories import road_spec

SUBNORMAL = 1e-39  # below float32's smallest normal (1.18e-38)


class _Tiny(torch.nn.Module):
    """Each output is the frame's mean times a subnormal: zero only where denormals are flushed."""

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        value = frame.float().mean() * torch.tensor(SUBNORMAL)
        return tuple(value.reshape(1, 1) for _ in road_spec().tensor_names)


def test_subnormals_are_flushed_inside_the_graph_and_not_after() -> None:
    backend = TorchBackend(_Tiny(), road_spec(), BackendOptions(device="cpu"))
    frame = np.full((180, 320, 3), 100, np.uint8)
    outputs = backend.infer(frame)
    assert all((t == 0).all() for t in outputs.values())  # flushed: x86's slow path never runs
    after = torch.tensor(SUBNORMAL) * torch.tensor(2.0)
    assert after.item() > 0  # the caller's thread is back to IEEE subnormals
    backend.close()
