from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from segengine.models import zoo

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGENGINE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "models").is_dir():
        pytest.fail(f"shared data not found at {SHARED}; set SEGENGINE_SHARED to the shared/ folder")
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
