"""The fuzz campaign's targets (benchmarks/fuzz_targets, run by benchmarks/fuzz.py) stay usable:
each takes its seeds and a few odd inputs without a crash, so a campaign never starts broken."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

_FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"


def _targets() -> dict[str, tuple[Callable[[bytes], None], list[bytes]]]:
    spec = importlib.util.spec_from_file_location("segengine_fuzz", _FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: (target.run, target.seeds) for name, target in module.targets().items()}


TARGETS = _targets()


def test_every_area_has_targets_with_seeds() -> None:
    areas = {name.split(":")[0] for name in TARGETS}
    assert {"tracking", "models", "inputs"} <= areas
    assert all(seeds for _, seeds in TARGETS.values()), [n for n, (_, s) in TARGETS.items() if not s]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_target_takes_its_seeds_and_odd_bytes(name: str) -> None:
    fn, seeds = TARGETS[name]
    for data in [*seeds, b"", b"\x00", b"\xff" * 64, "é²\n".encode()]:
        fn(data)
