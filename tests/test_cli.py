"""The `segengine` command line: listing, fetching, exporting, and clear errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from segengine.cli import main
from segengine.models import zoo


@pytest.fixture
def env(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("SEGENGINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGENGINE_MODEL_DIR", str(shared / "models"))
    return dict(os.environ)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segengine.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_models_list_shows_all_models_with_licences(env: dict[str, str]) -> None:
    out = _cli("models", "list", env=env)
    assert out.returncode == 0, out.stderr
    for name, licence in [("twinlitenet", "MIT"), ("yolov5s-seg", "GPL-3.0"), ("espnetv2-cityscapes", "MIT")]:
        line = next(row for row in out.stdout.splitlines() if row.startswith(name))
        assert licence in line and "mirror" in line


def test_models_fetch_copies_nothing_when_mirrored(env: dict[str, str], shared: Path) -> None:
    out = _cli("models", "fetch", "twinlitenet", env=env)
    assert out.returncode == 0, out.stderr
    assert str(shared / "models" / "twinlitenet_best.pth") in out.stdout


def test_unknown_names_and_bad_flags_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    out = _cli("export", "nosuch", "-o", str(tmp_path / "x.onnx"), env=env)
    assert out.returncode == 2 and "unknown preset or model 'nosuch'" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli("export", "road", "--raw", "-o", str(tmp_path / "x.onnx"), env=env)
    assert out.returncode == 2 and "road is a preset" in out.stderr
    out = _cli("export", "road", "--frame-size", "wide", "-o", str(tmp_path / "x.onnx"), env=env)
    assert out.returncode == 2 and "WIDTHxHEIGHT" in out.stderr
    out = _cli("models", "fetch", "twinlitenet", env={**env, "SEGENGINE_MODEL_DIR": str(tmp_path / "none")})
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_truncated_weights_in_cache_exit_2(env: dict[str, str], shared: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "models"
    cache.mkdir(parents=True)
    data = (shared / "models" / "twinlitenet_best.pth").read_bytes()
    (cache / "twinlitenet_best.pth").write_bytes(data[: len(data) // 2])
    out = _cli("export", "twinlitenet", "--raw", "-o", str(tmp_path / "t.onnx"), env=env)
    assert out.returncode == 2
    assert "twinlitenet_best.pth: sha256" in out.stderr and "segengine models fetch twinlitenet" in out.stderr


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_export_raw_has_upstreams_interface(name: str, env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    assert main(["export", name, "--raw", "-o", str(path)]) == 0
    model = onnx.load(str(path))
    card = zoo.card(name)
    (inp,) = model.graph.input
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "input" and dims == [1, 3, *card.input_size]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in model.graph.output] == list(card.raw_outputs)


def test_run_source_flags_reach_the_source_options() -> None:
    from segengine.capture.base import SourceOptions
    from segengine.cli import _parser
    from segengine.run import source_options

    args = _parser().parse_args(["run", "rtsp://h/x", "--open-timeout", "3", "--read-timeout", "1.5", "--stall", "0",
                                 "--no-frozen-check", "--reconnect", "4", "--rtsp-transport", "udp",
                                 "--camera-backend", "pyav", "--loop"])
    assert args.loop and source_options(args) == SourceOptions(
        open_timeout=3, read_timeout=1.5, stall=0, frozen_check=False, reconnect=4, rtsp_transport="udp",
        camera_backend="pyav")
    assert source_options(_parser().parse_args(["run", "x"])) == SourceOptions()
    for bad in (["--stall", "-1"], ["--open-timeout", "0"], ["--read-timeout", "soon"], ["--reconnect", "0"]):
        with pytest.raises(SystemExit) as exit_:
            _parser().parse_args(["run", "x", *bad])
        assert exit_.value.code == 2


def test_json_masks_without_json_is_refused_before_anything_opens(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # main() in-process: the check comes before the source (missing here) or any output is opened.
    out = tmp_path / "o.mp4"
    assert main(["run", str(tmp_path / "missing.mp4"), "-o", str(out), "--json-masks", "all"]) == 2
    assert "--json-masks says what --json writes" in capsys.readouterr().err
    assert not out.exists()
