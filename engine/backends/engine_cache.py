"""TensorRT engines cached on disk, keyed by everything that makes an engine valid, with a sidecar.

A serialized engine is only valid for the exact TensorRT version and GPU model (compute
capability) that built it, and it embeds the model, the precision and the shape profile. The
key covers all of them; the sidecar (``<key>.json``) records them in full, with the engine
file's size and sha256, and is checked *before* TensorRT deserialises anything, so a stale,
foreign, truncated or hand-edited engine is rebuilt (or explained), never loaded into a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segengine.download import sha256_of
from segengine.errors import BackendError

SIDECAR_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")

# (input name, min shape, opt shape, max shape)
ProfileEntry = tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # fp32, fp16 or int8 (int8 builds allow fp16 too)
    profile: tuple[ProfileEntry, ...]
    calibration: str = ""  # int8: the calibration table's identity (source and frame count)
    label: str = field(default="model", compare=False)  # a readable file-name prefix only

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BackendError(f"unknown precision {self.precision!r}; one of {', '.join(PRECISIONS)}")

    def fields(self) -> dict[str, object]:
        """What the sidecar records and checks (the label is not part of validity)."""
        out = asdict(self)
        out.pop("label")
        out["profile"] = [[name, list(lo), list(opt), list(hi)] for name, lo, opt, hi in self.profile]
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)[:40] or "model"
        return f"{label}-{self.precision}-{self.digest()[:16]}"


@dataclass(frozen=True)
class Lookup:
    status: str  # "hit", "missing", "mismatch" or "corrupt"
    engine: Path
    sidecar: Path
    reasons: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        return self.status == "hit"

    def explain(self) -> str:
        if self.status == "hit":
            return f"cached engine {self.engine}"
        if self.status == "missing":
            return f"no cached engine at {self.engine}"
        return f"cached engine {self.engine} is {self.status}: " + "; ".join(self.reasons)


class EngineCache:
    """``folder``/``<stem>.engine`` + ``<stem>.json``; timing caches and calibration tables beside them."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        return self.folder / f"{key.stem}.engine", self.folder / f"{key.stem}.json"

    def lookup(self, key: EngineKey) -> Lookup:
        engine, sidecar = self.paths(key)
        return check_engine(engine, sidecar, key)

    def store(self, key: EngineKey, data: bytes) -> Path:
        """Write the engine, then its sidecar, each atomically: a crash leaves no valid-looking pair."""
        engine, sidecar = self.paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(engine, data)
        record = {"format": SIDECAR_FORMAT, **key.fields(), "engine_bytes": len(data),
                  "engine_sha256": hashlib.sha256(data).hexdigest()}
        _atomic_write(sidecar, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        return engine

    def candidates(self, model_sha256: str, tensorrt_version: str, gpu_name: str,
                   compute_capability: str, batch: int = 1) -> tuple[list[tuple[Path, EngineKey]], list[str]]:
        """Valid engines of this model for this TensorRT and GPU whose batch profile spans 1..``batch``,
        best precision first; and, for the model's other engines, why each is not usable here."""
        found: list[tuple[Path, EngineKey]] = []
        stale: list[str] = []
        for sidecar in sorted(self.folder.glob("*.json")):
            try:
                record = json.loads(sidecar.read_text())
                if not isinstance(record, dict) or record.get("model_sha256") != model_sha256:
                    continue
                key = EngineKey(record["model_sha256"], record["tensorrt_version"], record["gpu_name"],
                                record["compute_capability"], record["precision"],
                                tuple((n, tuple(lo), tuple(opt), tuple(hi)) for n, lo, opt, hi in record["profile"]),
                                record.get("calibration", ""), sidecar.stem.rsplit("-", 2)[0])
            except (OSError, ValueError, KeyError, TypeError, BackendError):
                stale.append(f"{sidecar}: unreadable sidecar")
                continue
            want = {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name,
                    "compute_capability": compute_capability}
            reasons = [_difference(name, getattr(key, name), value) for name, value in want.items()
                       if getattr(key, name) != value]
            if not all(lo[0] <= 1 and batch <= hi[0] for _, lo, _, hi in key.profile):
                reasons.append(f"its batch profile does not span 1..{batch}")
            engine = sidecar.with_suffix(".engine")
            lookup = check_engine(engine, sidecar, key) if not reasons else None
            if lookup is not None and not lookup.usable:
                reasons.extend(lookup.reasons or (lookup.status,))
            if reasons:
                stale.append(f"{engine.name}: " + "; ".join(reasons))
            else:
                found.append((engine, key))
        found.sort(key=lambda item: PRECISIONS.index(item[1].precision), reverse=True)
        return found, stale

    def discard(self, key: EngineKey) -> None:
        for path in self.paths(key):
            path.unlink(missing_ok=True)

    def timing_cache(self, tensorrt_version: str, gpu_name: str, compute_capability: str) -> Path:
        """One timing cache per TensorRT version and GPU: tactic timings are shared by all models."""
        tag = hashlib.sha256(f"{tensorrt_version}|{gpu_name}|{compute_capability}".encode()).hexdigest()[:16]
        return self.folder / f"timing-{tag}.cache"

    def calibration_table(self, model_sha256: str, calibration: str) -> Path:
        tag = hashlib.sha256(f"{model_sha256}|{calibration}".encode()).hexdigest()[:16]
        return self.folder / f"calibration-{tag}.table"


def check_engine(engine: Path, sidecar: Path, key: EngineKey) -> Lookup:
    """Compare an engine file and its sidecar with what ``key`` needs, without deserialising anything."""
    if not engine.is_file():
        return Lookup("missing", engine, sidecar)
    if not sidecar.is_file():
        return Lookup("corrupt", engine, sidecar, (f"its sidecar {sidecar.name} is missing (an interrupted "
                                                   "build, or a file copied without it)",))
    try:
        record = json.loads(sidecar.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return Lookup("corrupt", engine, sidecar, (f"its sidecar {sidecar.name} is unreadable ({exc})",))
    if record.get("format") != SIDECAR_FORMAT:
        return Lookup("mismatch", engine, sidecar,
                      (f"sidecar format {record.get('format')!r}, this segengine writes {SIDECAR_FORMAT}",))
    reasons = tuple(_difference(name, record.get(name), want) for name, want in key.fields().items()
                    if record.get(name) != want)
    if reasons:
        return Lookup("mismatch", engine, sidecar, reasons)
    size = engine.stat().st_size
    if size != record.get("engine_bytes"):
        return Lookup("corrupt", engine, sidecar,
                      (f"the engine file has {size} bytes, its sidecar says {record.get('engine_bytes')} "
                       "(truncated or replaced)",))
    if sha256_of(engine) != record.get("engine_sha256"):
        return Lookup("corrupt", engine, sidecar, ("the engine file's sha256 differs from its sidecar's "
                                                   "(changed after it was built)",))
    return Lookup("hit", engine, sidecar)


_LABELS = {"model_sha256": "model", "tensorrt_version": "TensorRT version", "gpu_name": "GPU",
           "compute_capability": "compute capability", "precision": "precision", "profile": "shape profile",
           "calibration": "INT8 calibration"}


def _difference(name: str, found: object, want: object) -> str:
    def show(value: object) -> str:
        text = json.dumps(value) if not isinstance(value, str) else value
        return text[:16] + "…" if name == "model_sha256" and isinstance(value, str) else text

    return f"built for {_LABELS.get(name, name)} {show(found)}, this run needs {show(want)}"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
