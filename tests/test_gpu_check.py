"""benchmarks/gpu_check.py on a CPU: it skips every check with its reason where TensorRT is absent,
exits 1 on a FAIL, and its comparisons and data choices hold (ONNX Runtime standing in for TensorRT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_help_and_a_run_without_tensorrt_skip_every_check_with_the_reason() -> None:
    script = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")]
    assert subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=120).returncode == 0
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the checks would run")
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert len(lines) == len(gpu_check.CHECKS) and all(line.startswith("SKIP ") for line in lines), lines
    assert all("TensorRT is not installed: pip install 'tensorrt-cu12>=10,<11'" in line for line in lines)


def test_a_failed_check_makes_the_exit_status_1(monkeypatch, capsys) -> None:
    def broken(ctx) -> str:
        raise AssertionError("frame 2's drivable differs")

    monkeypatch.setattr(gpu_check, "CHECKS", {"a": ("fake", broken), "b": ("fine", lambda ctx: "ok")})
    assert gpu_check.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL fake" in out and "AssertionError: frame 2's drivable differs" in out and "PASS fine" in out


def _detections(classes: list[int], boxes: list[list[float]]) -> dict[str, np.ndarray]:
    n = 4
    out = {"scores": np.zeros((1, n), np.float32), "classes": np.zeros((1, n), np.int64),
           "boxes": np.zeros((1, n, 4), np.float32)}
    out["scores"][0, : len(classes)] = 0.9
    out["classes"][0, : len(classes)] = classes
    out["boxes"][0, : len(boxes)] = boxes
    return out


def test_detections_of_high_classes_must_come_back_with_their_class() -> None:
    want = _detections([2, 9, 28], [[0, 0, 10, 10], [20, 20, 30, 40], [50, 50, 70, 60]])
    assert gpu_check._missing_detections(want, want, min_class=9) == []
    shifted = _detections([2, 9, 28], [[0, 0, 10, 10], [21, 20, 31, 40], [50, 50, 70, 60]])
    assert gpu_check._missing_detections(shifted, want, min_class=9) == []
    wrong = _detections([2, 9, 27], [[0, 0, 10, 10], [20, 20, 30, 40], [50, 50, 70, 60]])
    assert gpu_check._missing_detections(wrong, want, min_class=9) == ["class 28 at [50, 50, 70, 60]"]


def test_the_class_frames_show_classes_of_9_and_above_and_the_checks_pass_on_a_stand_in(
        shared: Path, tmp_path: Path, monkeypatch) -> None:
    """The checks' plumbing with ONNX Runtime in TensorRT's place: they must pass comparing it with itself."""
    ctx = gpu_check.Context(shared, tmp_path, deadline=float("inf"))
    monkeypatch.setattr(gpu_check, "_needs_gpu", lambda ctx: None)
    monkeypatch.setattr(gpu_check, "_precision", lambda precision: None)
    monkeypatch.setattr(gpu_check, "_build", lambda ctx, graph, precision, **calib: graph)

    def run(graph: Path, frames: list[np.ndarray]):
        return [gpu_check._reference(graph, frame) for frame in frames], "CUDA graph captured on 0 of 1 lanes"

    monkeypatch.setattr(gpu_check, "_run", run)
    said = gpu_check.check_fp16_classes(ctx)
    assert "Seq05VD_f03000.png: 2/2 class >= 9" in said and "Seq05VD_f04470.png: 2/2 class >= 9" in said
    assert "vs ONNX Runtime drivable 1.0000, lanes 1.0000" in gpu_check.check_int8(ctx)
