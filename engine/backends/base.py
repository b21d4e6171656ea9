"""The Backend interface: runs a prepared segengine graph, knowing nothing of presets.

Every backend has one constructor, ``Backend(graph, spec, options)``: ``graph`` is what the graph
package prepared in the backend's ``graph_format`` (an ONNX file, or a torch module), ``spec`` its
:class:`GraphSpec`. ``available(env)`` says why it cannot run on this machine (None when it can),
``speed(env, models)`` ranks it for ``auto`` (for the graph of those models) and ``where(env)`` says
where it would run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from segengine.backends.probe import GpuEnvironment
from segengine.graph.spec import GraphSpec
from segengine.models import zoo


@dataclass(frozen=True)
class BackendOptions:
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: the backend's own choice
    precision: str = "auto"  # "fp32", "bf16" (OpenVINO on CPUs that have it); "auto": the backend's best
    threads: int = 0  # CPU threads for inference; 0: the runtime's default
    streams: int = 0  # frames computed at once (OpenVINO's streams); 0: the backend's choice, 1: lowest latency
    dirs: zoo.WeightDirs | None = None  # compiled engines are cached beside the weights' cache


@runtime_checkable
class Backend(Protocol):
    name: ClassVar[str]
    graph_format: ClassVar[str]  # "onnx" or "torch": what segengine.graph.prepare makes for it
    spec: GraphSpec

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 B×H×W×3 (or H×W×3) RGB → the graph's output tensors by name, batch axis first."""
        ...

    def close(self) -> None: ...


class BackendType(Protocol):
    """What the registry knows of a backend class before constructing one."""

    name: ClassVar[str]
    graph_format: ClassVar[str]

    def __call__(self, graph: Any, spec: GraphSpec, options: BackendOptions) -> Backend: ...

    def available(self, env: GpuEnvironment) -> str | None: ...

    def require(self, env: GpuEnvironment) -> None: ...

    def speed(self, env: GpuEnvironment, models: tuple[str, ...] = ()) -> int: ...

    def where(self, env: GpuEnvironment) -> str: ...


class BackendInfo:
    """Defaults for the class-level questions: available everywhere, refused with the reason, fp32."""

    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # Whether frames of several streams go faster as one batch than one at a time (the multi-stream
    # pipeline exports its graph with a batch axis only then; else it keeps frames in flight).
    batching: ClassVar[bool] = True

    @classmethod
    def check_precision(cls, options: BackendOptions) -> str:
        """The precision to run: "auto" is the first the backend lists; one it lacks is refused."""
        from segengine.errors import BackendError

        if options.precision == "auto":
            return cls.precisions[0]
        if options.precision not in cls.precisions:
            raise BackendError(f"backend {cls.name} runs {', '.join(cls.precisions)}, not {options.precision}")  # type: ignore[attr-defined]
        return options.precision

    @classmethod
    def available(cls, env: GpuEnvironment) -> str | None:
        return None

    @classmethod
    def require(cls, env: GpuEnvironment) -> None:
        from segengine.errors import BackendError

        reason = cls.available(env)
        if reason is not None:
            raise BackendError(f"backend {cls.name} cannot run here: {reason}")  # type: ignore[attr-defined]


@runtime_checkable
class Pipelined(Protocol):
    """A backend that keeps up to ``depth`` frames in flight: ``submit`` returns before the frame
    is computed (having copied it: the caller may reuse its array at once), ``collect`` returns the
    oldest submitted frame's outputs (arrays the caller owns)."""

    depth: int  # frames it can hold submitted and not yet collected

    def submit(self, frame: np.ndarray) -> None: ...

    def collect(self) -> dict[str, np.ndarray]: ...
