"""Exported graphs, cached on disk by everything that shapes them.

An export takes seconds to a minute, so ``segengine run`` builds a preset's graph for a
frame size once and reuses it. The key covers the preset, the frame size, every
model's weights (their card sha256) and every source file that shapes the graph (the graph
and models packages, the geometry), so a changed model or a new segengine version never
reuses a stale graph; a file found under its key whose spec this segengine cannot read is
exported again.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import segengine
import segengine.graph as graph_pkg
import segengine.models as models_pkg
from segengine.download import sha256_of
from segengine.errors import ConfigError
from segengine.graph.compose import build_graph, export_graph, model_names
from segengine.graph.spec import GraphSpec
from segengine.models import zoo

log = logging.getLogger(__name__)


def shaping_files() -> list[Path]:
    """Every source file an exported graph depends on: the graph and models packages and, followed
    through their imports, every segengine module they use (geometry, errors, ...)."""
    roots = {"segengine": Path(segengine.__file__).parent, "segengine.models": Path(models_pkg.__file__).parent}
    todo = [p for package in (graph_pkg, models_pkg) for p in Path(package.__file__).parent.glob("*.py")]
    found: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        for name in _imported(path):
            todo.extend(f for f in _files_of(name, roots) if f not in found)
    return sorted(found)


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "segengine" or n.startswith("segengine.")}


def _files_of(module: str, roots: dict[str, Path]) -> list[Path]:
    """The file of a segengine module (a package's __init__ is not followed: it is no part of a graph)."""
    prefix = "segengine.models" if module.startswith("segengine.models") else "segengine"
    parts = module[len(prefix):].strip(".").split(".") if module != prefix else []
    candidate = roots[prefix].joinpath(*parts)
    return [candidate.with_suffix(".py")] if parts and candidate.with_suffix(".py").is_file() else []


def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in shaping_files():
        digest.update(f"{path.parent.name}/{path.name}".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def graph_key(name: str, frame_size: tuple[int, int], max_batch: int = 1) -> str:
    """``max_batch`` > 1 adds ``-b{max_batch}``: a batch-1 graph keeps the key it always had."""
    digest = hashlib.sha256(_code_digest().encode())
    for model in model_names(name):
        digest.update(zoo.card(model).sha256.encode())
    h, w = frame_size
    batch = f"-b{max_batch}" if max_batch > 1 else ""
    return f"{name}-{w}x{h}{batch}-{digest.hexdigest()[:16]}"


def cached_graph(name: str, frame_size: tuple[int, int], *, dirs: zoo.WeightDirs | None = None,
                 max_batch: int = 1) -> Path:
    """The ONNX graph of preset or model ``name`` for ``frame_size`` (height, width) and batches of
    1..``max_batch`` frames; exported when missing."""
    dirs = dirs or zoo.WeightDirs.from_env()
    return _cached(dirs, graph_key(name, frame_size, max_batch),
                   lambda out: export_graph(build_graph(name, frame_size, dirs, max_batch), out))


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
        try:
            GraphSpec.read_file(path)
            return path
        except ConfigError as exc:  # an older format, or a damaged file: never misread, rebuilt
            log.warning("%s; exporting it again", exc)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        export(Path(tmp))
        os.replace(tmp, path)  # atomic: a half-written graph is never found
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
