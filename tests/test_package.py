"""What a user installs and imports: one top-level name, the public API, the error tree, the graph cache key."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import segengine
from segengine import errors

REPO = Path(__file__).resolve().parents[1]


def test_every_error_is_also_the_builtin_it_resembles() -> None:
    bases = {errors.SourceError: OSError, errors.EndOfStream: EOFError, errors.BackendError: RuntimeError,
             errors.ConfigError: ValueError, errors.ModelError: ValueError, errors.DownloadError: OSError,
             errors.SinkError: OSError, errors.OutOfMemory: MemoryError}
    for error, builtin in bases.items():
        assert issubclass(error, errors.EngineError) and issubclass(error, builtin), error
    assert issubclass(errors.DownloadError, errors.ModelError)
    from segengine.capture.base import SourceTimeout
    from segengine.graph.spec import StaleGraphError

    assert issubclass(SourceTimeout, TimeoutError) and issubclass(StaleGraphError, errors.ConfigError)


def test_the_public_api_is_importable_from_the_top() -> None:
    for name in segengine.__all__:
        assert getattr(segengine, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        segengine.nope  # noqa: B018


def test_the_package_list_matches_the_folders() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"segengine" + ("." + ".".join(p.parent.relative_to(REPO / "engine").parts) if p.parent != REPO / "engine"
                            else "") for p in (REPO / "engine").rglob("__init__.py")}
    assert listed == found | {"segengine.models"}


def test_the_graph_cache_key_covers_every_module_the_graph_imports() -> None:
    """geometry.py shapes every placement: an edit there must not reuse a stale graph."""
    from segengine.graph.cache import shaping_files

    files = set(shaping_files())
    assert REPO / "engine" / "geometry.py" in files and REPO / "engine" / "graph" / "nms.py" in files
    for path in (REPO / "engine" / "graph").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segengine."):
                target = REPO / "engine" / Path(*node.module.split(".")[1:]).with_suffix(".py")
                if node.module.startswith("segengine.models."):
                    target = REPO / "models" / (node.module.split(".")[-1] + ".py")
                assert not target.is_file() or target in files, f"{path.name} imports {node.module}"


def test_the_wheel_installs_segengine_alone(tmp_path: Path) -> None:
    """No top-level `engine` or `models` (YOLOv5's own package is called models), and py.typed."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("segengine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"segengine"}
    assert {"segengine/py.typed", "segengine/models/zoo.py", "segengine/layers/instances.py"} <= set(names)


def test_dependency_floors_exclude_the_vulnerable_releases_our_code_relies_on() -> None:
    """Each floor's reason is a comment in pyproject.toml; lowering one brings the hole back."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {r.name: r.specifier for r in map(Requirement, tomllib.loads(
        (REPO / "pyproject.toml").read_text())["project"]["dependencies"])}
    for name, vulnerable, fixed in [("torch", "2.5.1", "2.6.0"), ("onnx", "1.20.1", "1.21.0"),
                                    ("protobuf", "5.29.4", "5.29.5"), ("av", "12.3.0", "13.0.0")]:
        assert not deps[name].contains(Version(vulnerable)) and deps[name].contains(Version(fixed)), name
    assert deps["torch"].contains(Version("2.13.0"))  # CI's CPU build
