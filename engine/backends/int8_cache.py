"""OpenVINO INT8 models (IR .xml + .bin) cached on disk, keyed by the graph and its calibration, with a sidecar.

``segengine build --backend openvino --int8`` quantises once and stores the model here; the
OpenVINO backend at precision ``int8`` finds it by the graph's sha256 alone (it does not know
which frames calibrated it). The sidecar (``<stem>.json``) records the key in full and the
sha256 of both files, written last: a pair without it, or files changed since, are not loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segengine.download import sha256_of

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class Int8Key:
    graph_sha256: str
    calibration: str  # calibration_identity(): the source (with a file's size and time) and the frame count
    recipe: str  # KeepFloat.identity: what stayed in float
    label: str = field(default="graph", compare=False)  # a readable file-name prefix only

    def fields(self) -> dict[str, str]:
        out = asdict(self)
        out.pop("label")
        return out

    @property
    def stem(self) -> str:
        digest = hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:16]
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)[:40] or "graph"
        return f"{label}-int8-{digest}"


@dataclass(frozen=True)
class Found:
    xml: Path
    record: dict[str, Any]


class Int8Cache:
    """``folder``/``<stem>.xml`` + ``.bin`` + ``.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def paths(self, key: Int8Key) -> tuple[Path, Path, Path]:
        base = self.folder / key.stem
        return base.with_suffix(".xml"), base.with_suffix(".bin"), base.with_suffix(".json")

    def store(self, key: Int8Key, model: Any, versions: dict[str, str]) -> Path:
        """Save an ``openvino.Model``: the IR under temporary names, renamed, then the sidecar."""
        import openvino as ov

        xml, bin_, sidecar = self.paths(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        sidecar.unlink(missing_ok=True)  # a crash from here on leaves no valid-looking set
        tmp = self.folder / f".{key.stem}.{os.getpid()}.xml"
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), bin_)
        os.replace(tmp, xml)
        record = {"format": SIDECAR_FORMAT, **key.fields(), **versions,
                  "xml_sha256": sha256_of(xml), "bin_sha256": sha256_of(bin_)}
        tmp_sidecar = sidecar.with_suffix(".json.tmp")
        tmp_sidecar.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp_sidecar, sidecar)
        return xml

    def lookup(self, key: Int8Key) -> Found | None:
        xml, _, sidecar = self.paths(key)
        found, _ = self._check(sidecar)
        return found if found is not None and found.record.get("calibration") == key.calibration else None

    def find(self, graph_sha256: str) -> tuple[Found | None, list[str]]:
        """The newest intact INT8 model of this graph, and why each other one of it is not usable."""
        best: Found | None = None
        stale: list[str] = []
        for sidecar in sorted(self.folder.glob("*-int8-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                if json.loads(sidecar.read_text()).get("graph_sha256") != graph_sha256:
                    continue
            except (OSError, ValueError, AttributeError):
                stale.append(f"{sidecar.name}: unreadable sidecar")
                continue
            found, reason = self._check(sidecar)
            if found is None:
                stale.append(f"{sidecar.name}: {reason}")
            elif best is None:
                best = found
        return best, stale

    @staticmethod
    def _check(sidecar: Path) -> tuple[Found | None, str]:
        try:
            record = json.loads(sidecar.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError) as exc:
            return None, f"unreadable sidecar ({exc})"
        if record.get("format") != SIDECAR_FORMAT:
            return None, f"sidecar format {record.get('format')!r}, this segengine writes {SIDECAR_FORMAT}"
        xml, bin_ = sidecar.with_suffix(".xml"), sidecar.with_suffix(".bin")
        for path, want in ((xml, record.get("xml_sha256")), (bin_, record.get("bin_sha256"))):
            if not path.is_file():
                return None, f"{path.name} is missing"
            if sha256_of(path) != want:
                return None, f"{path.name} changed after it was built (its sha256 differs from the sidecar's)"
        return Found(xml, record), ""
