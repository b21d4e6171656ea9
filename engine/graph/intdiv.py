"""Integer floor division as one graph op.

The exporter turns ``torch.div(x, d, rounding_mode=...)`` on int32 into a float round trip
(Cast, Div, Floor, Sign, Abs, Mul, Cast: seven full-size passes, and in float, where values
past 2^24 are rounded). ONNX's own Div on integers is exact and a single pass; for the
non-negative values it is used on here, its truncation and torch's floor agree.
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op


@torch.library.custom_op("segengine::floor_div", mutates_args=())
def floor_div(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """``x // divisor`` for int32 ``x >= 0`` and ``divisor > 0``."""
    return torch.div(x, divisor, rounding_mode="floor")


@floor_div.register_fake
def _(x: torch.Tensor, divisor: int) -> torch.Tensor:
    return torch.empty_like(x)


def _floor_div_onnx(x, divisor: int):
    return op.Div(x, op.CastLike(divisor, x))


TRANSLATIONS = {torch.ops.segengine.floor_div.default: _floor_div_onnx}
