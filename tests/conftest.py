from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from segengine.models import zoo

# Property tests of the parsers a user's file reaches (tests/test_fuzz_*.py): a short, repeatable
# run in CI; HYPOTHESIS_PROFILE=long for a campaign (benchmarks/fuzz.py runs it and counts).
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGENGINE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real weights, videos and references; tests that need them skip without them."""
    if not (SHARED / "models").is_dir():
        pytest.skip(f"needs the shared data (weights, videos): not found at {SHARED}; set SEGENGINE_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def dirs(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> zoo.WeightDirs:
    """Weights from the shared mirror; a fresh cache (graphs are exported into it) per test run."""
    return zoo.WeightDirs(cache=tmp_path_factory.mktemp("cache") / "models", mirror=shared / "models")


@pytest.fixture(scope="session")
def highway_frame(shared: Path) -> np.ndarray:
    """A real 1280×720 RGB highway frame with two cars."""
    with av.open(str(shared / "data" / "videos" / "udacity_vehicledet_test_video.mp4")) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            if index == 4:
                return decoded.to_ndarray(format="rgb24")
    raise AssertionError("video too short")


# The fast unit layer is `python -m pytest -m "not integration"`: no weights, no real data, no servers.
_NEEDS_DATA = {"shared", "dirs", "highway_frame", "env"}
_SERVER_MODULES = {"test_live_run", "test_live_servers", "test_live_sources", "test_reconnect", "test_package"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if _NEEDS_DATA & set(getattr(item, "fixturenames", ())) or module in _SERVER_MODULES:
            item.add_marker(pytest.mark.integration)
