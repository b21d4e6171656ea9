"""Which backend runs the graph: the registry, asked by name or by ``auto`` (the fastest available, with why).

``BACKENDS`` lists every backend class, fastest first where it can run; it also feeds the CLI's
choices and ``doctor``. A named backend that cannot run here is refused at once, with what to
install, not after the graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from segengine.backends.base import Backend, BackendOptions, BackendType
from segengine.backends.onnxruntime import OnnxRuntimeBackend
from segengine.backends.openvino import OpenVinoBackend
from segengine.backends.probe import GpuEnvironment, detect
from segengine.backends.tensorrt_backend import TensorRTBackend
from segengine.backends.torch import TorchBackend
from segengine.errors import ConfigError
from segengine.graph.prepare import GraphTarget, PreparedGraph, prepare
from segengine.models import zoo

BACKENDS: dict[str, BackendType] = {b.name: b for b in (TensorRTBackend, TorchBackend, OpenVinoBackend,
                                                         OnnxRuntimeBackend)}
NAMES = ("auto", *BACKENDS)


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def choose(requested: str, env: GpuEnvironment | None = None, models: tuple[str, ...] = ()) -> Choice:
    """``models``: the networks the graph will hold, for backends whose speed depends on them."""
    if requested not in NAMES:
        raise ConfigError(f"unknown backend {requested!r}; choose one of {', '.join(NAMES)}")
    if requested == "onnxruntime":  # needs no probe of the GPU
        return Choice("onnxruntime", "asked for")
    env = env or detect()
    if requested != "auto":
        backend = BACKENDS[requested]
        backend.require(env)  # raises with every missing piece and its fix
        return Choice(requested, f"asked for; {backend.where(env)}")
    ranked = sorted(BACKENDS.values(), key=lambda b: -b.speed(env, models))
    best = next(b for b in ranked if b.available(env) is None)
    faster = [f"{b.name}: {b.available(env)}" for b in ranked[:ranked.index(best)]]
    return Choice(best.name, best.where(env) + "".join(f"; not {f}" for f in faster))


def available_report(env: GpuEnvironment) -> list[str]:
    """One line per backend, fastest first: whether it runs here and why not (for ``doctor``)."""
    ranked = sorted(BACKENDS.values(), key=lambda b: -b.speed(env))
    return [f"{b.name}: " + (f"yes, {b.where(env)}" if b.available(env) is None else f"no, {b.available(env)}")
            for b in ranked]


def prepare_for(choice: Choice, target: GraphTarget, frame_size: tuple[int, int],
                dirs: zoo.WeightDirs | None = None, max_batch: int = 1) -> PreparedGraph:
    """The graph of ``target`` in the form the chosen backend runs, for batches of 1..``max_batch``
    frames (a user's own model: batch 1 only; its spec says so)."""
    fmt = BACKENDS[choice.name].graph_format
    return prepare(target, frame_size, fmt, dirs, max_batch)  # type: ignore[arg-type]


def open_backend(choice: Choice, prepared: PreparedGraph, options: BackendOptions | None = None) -> Backend:
    return BACKENDS[choice.name](prepared.graph, prepared.spec, options or BackendOptions())
