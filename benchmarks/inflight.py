"""Every input through a backend as the pipeline runs it: a backend with frames in flight (OpenVINO's
streams, TensorRT's two buffer sets) kept ``depth`` deep, the oldest collected once it is full."""

from __future__ import annotations

from collections.abc import Sequence

from segengine.backends.base import Pipelined


def run_all(backend: object, inputs: Sequence[object]) -> None:
    if not isinstance(backend, Pipelined):
        for item in inputs:
            backend.infer(item)  # type: ignore[attr-defined]
        return
    in_flight = 0
    for item in inputs:
        backend.submit(item)
        in_flight += 1
        if in_flight >= backend.depth:
            backend.collect()
            in_flight -= 1
    for _ in range(in_flight):
        backend.collect()
