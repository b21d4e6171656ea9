"""The graph spec: what an exported graph takes and gives. The only reader and writer of its metadata.

An exported graph carries its spec as JSON under the ONNX metadata key ``segengine``::

    {"version": 2, "name": "road",
     "input": {"name": "frame", "dtype": "uint8", "frame_size": [540, 960], "max_batch": 1, "dynamic_batch": false},
     "outputs": [{"name": "drivable", "kind": "binary_map", "model": "twinlitenet", "tensors": ["drivable"],
                  "placement": {...}, "classes": ["background", "drivable"], "extras": {}}, ...]}

Each output is one layer of the results (``FrameResult.layers[name]``): its ``kind`` names the
layer type that decodes it, ``tensors`` the graph outputs it reads (batch axis first), and
``placement`` where the frame sits in that model's input. A graph written by an older segengine
(no ``version``) is refused with :class:`StaleGraphError`, so caches rebuild it rather than misread it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segengine.errors import BackendError, ConfigError
from segengine.geometry import Placement

VERSION = 2
METADATA_KEY = "segengine"
INPUT_NAME = "frame"


class StaleGraphError(ConfigError):
    """The graph's metadata is of an older (or newer) format than this segengine reads."""


@dataclass(frozen=True)
class InputSpec:
    """The graph's one input: uint8 frames, B×H×W×3 RGB."""

    frame_size: tuple[int, int]  # (height, width)
    name: str = INPUT_NAME
    dtype: str = "uint8"
    max_batch: int = 1
    dynamic_batch: bool = False  # the batch axis takes 1..max_batch; else exactly max_batch

    def __post_init__(self) -> None:
        h, w = self.frame_size
        if not (16 <= h <= 8192 and 16 <= w <= 8192):
            raise ConfigError(f"frame size {w}x{h} is out of range (16..8192 per side)")
        if self.max_batch < 1:
            raise ConfigError(f"graph input: max_batch must be >= 1, got {self.max_batch}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of a full batch."""
        return (self.max_batch, *self.frame_size, 3)


@dataclass(frozen=True)
class OutputSpec:
    """One layer of the results: which graph tensors it reads and how to interpret them."""

    name: str  # the layer's name in FrameResult.layers
    kind: str  # a layer kind registered in segengine.layers
    model: str  # the network it comes from (a zoo name, or the user's file name)
    tensors: tuple[str, ...]  # graph outputs it reads, in the order its kind expects
    placement: Placement  # where the frame sits in that model's input
    classes: tuple[str, ...]
    extras: Mapping[str, Any] = field(default_factory=dict)  # kind-specific (thresholds, top-K, ...)

    def __post_init__(self) -> None:
        if not self.name or not self.tensors:
            raise ConfigError(f"graph output {self.name!r}: needs a name and at least one tensor")
        if not self.classes:
            raise ConfigError(f"graph output {self.name!r}: needs its class names")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model": self.model, "tensors": list(self.tensors),
                "placement": self.placement.to_dict(), "classes": list(self.classes), "extras": dict(self.extras)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OutputSpec:
        return cls(name=str(d["name"]), kind=str(d["kind"]), model=str(d["model"]),
                   tensors=tuple(str(t) for t in d["tensors"]), placement=Placement.from_dict(d["placement"]),
                   classes=tuple(str(c) for c in d["classes"]), extras=dict(d.get("extras") or {}))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    version: int = VERSION

    def __post_init__(self) -> None:
        names = [o.name for o in self.outputs]
        tensors = self.tensor_names
        if len(set(names)) != len(names):
            raise ConfigError(f"graph {self.name}: two outputs share a name ({', '.join(names)})")
        if len(set(tensors)) != len(tensors) or self.input.name in tensors:
            raise ConfigError(f"graph {self.name}: two outputs read the same tensor ({', '.join(tensors)})")
        for out in self.outputs:
            if out.placement.frame_size != self.frame_size:
                raise ConfigError(f"graph {self.name}: output {out.name} is placed for frames of "
                                  f"{out.placement.frame_size}, the input takes {self.frame_size}")

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.input.frame_size

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Every graph output tensor, in the graph's output order."""
        return tuple(t for o in self.outputs for t in o.tensors)

    def check_batch(self, frames: int) -> None:
        """Refuse a batch the graph does not take: an exported batch axis carries no bound of its own,
        and a runtime would run a larger batch (ONNX Runtime, OpenVINO) or fail on it with its own words."""
        top, dynamic = self.input.max_batch, self.input.dynamic_batch
        if not (1 <= frames <= top if dynamic else frames == top):
            takes = f"1 to {top} frames" if dynamic else f"exactly {top} frames" if top > 1 else "one frame"
            raise BackendError(f"graph {self.name} takes {takes} per call (its max batch is {top}), not {frames}")

    def output(self, name: str) -> OutputSpec:
        for out in self.outputs:
            if out.name == name:
                return out
        have = ", ".join(o.name for o in self.outputs)
        raise ConfigError(f"graph {self.name} has no output {name!r} (it has {have})")

    # -- the metadata ---------------------------------------------------------------------------

    def to_json(self) -> str:
        i = self.input
        return json.dumps({"version": self.version, "name": self.name,
                           "input": {"name": i.name, "dtype": i.dtype, "frame_size": list(i.frame_size),
                                     "max_batch": i.max_batch, "dynamic_batch": i.dynamic_batch},
                           "outputs": [o.to_dict() for o in self.outputs]})

    @classmethod
    def from_json(cls, text: str, *, origin: str = "graph") -> GraphSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{origin}: its segengine metadata is not JSON ({exc})") from exc
        version = d.get("version") if isinstance(d, dict) else None
        if version != VERSION:
            found = "an older segengine (no version)" if version is None else f"graph format {version}"
            raise StaleGraphError(f"{origin}: written by {found}; this segengine reads graph format {VERSION}. "
                                  "Export it again (`segengine export`); cached graphs are rebuilt by themselves")
        try:
            i = d["input"]
            spec_input = InputSpec(frame_size=tuple(int(v) for v in i["frame_size"]), name=str(i["name"]),
                                   dtype=str(i["dtype"]), max_batch=int(i["max_batch"]),
                                   dynamic_batch=bool(i["dynamic_batch"]))
            return cls(name=str(d["name"]), input=spec_input,
                       outputs=tuple(OutputSpec.from_dict(o) for o in d["outputs"]), version=version)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{origin}: its segengine metadata is incomplete ({type(exc).__name__}: {exc})") from exc

    def write(self, model: Any) -> None:
        """Store this spec in an ``onnx.ModelProto``'s metadata, keeping every other entry."""
        import onnx

        kept = {e.key: e.value for e in model.metadata_props if e.key != METADATA_KEY}
        kept[METADATA_KEY] = self.to_json()
        onnx.helper.set_model_props(model, kept)

    @classmethod
    def read(cls, model: Any, *, origin: str = "graph") -> GraphSpec:
        """The spec stored in an ``onnx.ModelProto``."""
        for entry in model.metadata_props:
            if entry.key == METADATA_KEY:
                return cls.from_json(entry.value, origin=origin)
        raise ConfigError(f"{origin}: this ONNX file has no segengine spec; export it with `segengine export`")

    @classmethod
    def read_file(cls, path: Path) -> GraphSpec:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and OSError alike
            raise ConfigError(f"{path}: not a readable ONNX file ({exc})") from exc
        return cls.read(model, origin=str(path))
