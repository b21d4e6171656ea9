"""Exported graphs, cached on disk by everything that shapes them.

An export takes seconds to a minute, so ``segengine run`` builds a preset's graph for a
frame size once and reuses it. The key covers the preset, the frame size, every
model's weights (their card sha256) and the source code of the graph and the models, so
a changed model or a new segengine version never reuses a stale graph.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import segengine.graph as graph_pkg
import segengine.models as models_pkg
from segengine.download import sha256_of
from segengine.graph.compose import build_graph, export_graph, model_names
from segengine.models import zoo


def _code_digest() -> str:
    digest = hashlib.sha256()
    for package in (graph_pkg, models_pkg):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def graph_key(name: str, frame_size: tuple[int, int]) -> str:
    digest = hashlib.sha256(_code_digest().encode())
    for model in model_names(name):
        digest.update(zoo.card(model).sha256.encode())
    h, w = frame_size
    return f"{name}-{w}x{h}-{digest.hexdigest()[:16]}"


def cached_graph(name: str, frame_size: tuple[int, int], *, dirs: zoo.WeightDirs | None = None) -> Path:
    """The ONNX graph of preset or model ``name`` for ``frame_size`` (height, width); exported when missing."""
    dirs = dirs or zoo.WeightDirs.from_env()
    return _cached(dirs, graph_key(name, frame_size),
                   lambda out: export_graph(build_graph(name, frame_size, dirs), out))


def cached_custom_graph(model_file: Path, frame_size: tuple[int, int], *, classes: Path | None = None,
                        dirs: zoo.WeightDirs | None = None) -> Path:
    """A user's ONNX model wrapped into a segengine graph for ``frame_size``; keyed by the file's bytes."""
    from segengine.graph.custom import export_custom_graph

    dirs = dirs or zoo.WeightDirs.from_env()
    digest = hashlib.sha256(_code_digest().encode())
    for part in (model_file, classes):
        if part is not None:
            digest.update(sha256_of(Path(part)).encode())
    h, w = frame_size
    key = f"{Path(model_file).stem}-{w}x{h}-{digest.hexdigest()[:16]}"
    return _cached(dirs, key, lambda out: export_custom_graph(model_file, frame_size, out, classes=classes))


def _cached(dirs: zoo.WeightDirs, key: str, export: Callable[[Path], object]) -> Path:
    folder = dirs.cache.parent / "graphs"
    path = folder / f"{key}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        export(Path(tmp))
        os.replace(tmp, path)  # atomic: a half-written graph is never found
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
