"""What the GPU path installs and how it is detected, checked without a GPU."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _extra() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]


def _tensorrt_extra() -> dict[str, object]:
    from packaging.requirements import Requirement

    return {r.name: r for r in map(Requirement, _extra())}


def test_tensorrt_and_cuda_python_are_held_to_one_cuda_major_version() -> None:
    reqs = _tensorrt_extra()
    trt = next((name for name in reqs if name.startswith("tensorrt")), None)
    # The bare `tensorrt` wheel picks its CUDA major itself (13 in recent 10.x): the name must say it.
    assert trt is not None and trt.startswith("tensorrt-cu"), f"name the CUDA variant of TensorRT, not {trt!r}"
    major = int(trt.removeprefix("tensorrt-cu"))
    assert reqs[trt].specifier.contains("10.3") and not reqs[trt].specifier.contains("11.0")
    cuda = reqs["cuda-python"].specifier
    assert cuda.contains(f"{major}.0") and cuda.contains(f"{major}.9")
    assert not cuda.contains(f"{major + 1}.0") and not cuda.contains(f"{major - 1}.9"), str(cuda)


def test_readme_installs_what_pyproject_pins() -> None:
    readme = (REPO / "README.md").read_text()
    for req in _extra():
        assert f"'{req}'" in readme, f"README's GPU section should show '{req}'"


def test_a_cuda_namespace_package_is_not_cuda_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segengine.backends.cuda import available

    (tmp_path / "cuda").mkdir()  # what other NVIDIA wheels leave: a `cuda` namespace, no cuda-python
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "cuda-python" not in available()


def test_cuda_python_is_found_by_its_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    from segengine.backends.cuda import available
    from segengine.backends.probe import detect

    real = importlib.metadata.version

    def version(dist: str) -> str:
        return "12.9.0" if dist == "cuda-bindings" else real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert available()["cuda-python"] == "cuda-python 12.9.0 is installed"
    assert detect().cuda_python_version == "12.9.0"
