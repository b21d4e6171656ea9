"""TwinLiteNet: our re-implementation (torch and its ONNX export) computes upstream's function."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from segengine.errors import ModelError
from segengine.models.twinlitenet import CARD, TwinLiteNet, load_network

REL_TOL = 1e-4  # max abs diff, relative to the reference output's max abs value
ARGMAX_AGREE = 0.999


@pytest.fixture(scope="module")
def weights(shared: Path) -> Path:
    return shared / "models" / CARD.filename


@pytest.fixture(scope="module")
def reference(shared: Path) -> dict[str, np.ndarray]:
    with np.load(shared / "reference" / "twinlitenet_solidWhiteCurve.npz") as npz:
        return {k: npz[k] for k in ("input", "da", "ll")}


@pytest.fixture(scope="module")
def net(weights: Path) -> torch.nn.Module:
    return load_network(weights)


def _assert_matches(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == np.float32, f"{name}: dtype {got.dtype}"
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= REL_TOL, f"{name}: max abs diff is {rel:.2e} of the output's scale"
    agree = float((got.argmax(axis=1) == want.argmax(axis=1)).mean())
    assert agree >= ARGMAX_AGREE, f"{name}: argmax agrees on only {agree:.4%} of pixels"


def test_card_matches_weight_file(weights: Path) -> None:
    data = weights.read_bytes()
    assert len(data) == CARD.size_bytes
    assert hashlib.sha256(data).hexdigest() == CARD.sha256
    assert CARD.raw_outputs == ("da", "ll") and CARD.input_size == (360, 640)


def test_torch_reproduces_upstream(net: torch.nn.Module, reference: dict[str, np.ndarray]) -> None:
    assert not net.training
    assert all(p.dtype == torch.float32 for p in net.parameters())
    tiny = torch.finfo(torch.float32).tiny
    floats = [t for t in net.state_dict().values() if t.is_floating_point()]
    assert not any(((t != 0) & (t.abs() < tiny)).any() for t in floats), "subnormal weights left"
    with torch.no_grad():
        da, ll = net(torch.from_numpy(reference["input"]))
    _assert_matches("da", da.numpy(), reference["da"])
    _assert_matches("ll", ll.numpy(), reference["ll"])


def test_onnx_export_reproduces_upstream(
    net: torch.nn.Module, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "twinlitenet.onnx"
    x = torch.from_numpy(reference["input"])
    torch.onnx.export(
        net, (x,), str(onnx_path), dynamo=True, external_data=False,
        input_names=["input"], output_names=["da", "ll"],
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["da", "ll"]
    da, ll = session.run(["da", "ll"], {"input": reference["input"]})
    _assert_matches("onnx da", da, reference["da"])
    _assert_matches("onnx ll", ll, reference["ll"])


def test_truncated_weights_raise_model_error(weights: Path, tmp_path: Path) -> None:
    data = weights.read_bytes()
    broken = tmp_path / "twinlitenet_truncated.pth"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="twinlitenet_truncated.pth"):
        load_network(broken)


def test_missing_file_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no_such.pth"):
        load_network(tmp_path / "no_such.pth")


@pytest.mark.parametrize("rename", [False, True], ids=["missing", "renamed"])
def test_bad_key_raises_model_error(weights: Path, tmp_path: Path, rename: bool) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    tensor = state.pop("module.encoder.sa.gamma")
    if rename:
        state["module.encoder.sa.gama"] = tensor
    bad = tmp_path / "twinlitenet_badkey.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError) as info:
        load_network(bad)
    message = str(info.value)
    assert "twinlitenet_badkey.pth" in message
    assert "encoder.sa.gamma" in message  # the key the model needs
    if rename:
        assert "encoder.sa.gama" in message  # the key the file has instead


def test_untrained_net_has_upstream_key_layout(weights: Path) -> None:
    # Every key in the file maps 1:1 onto our module after stripping DataParallel's prefix.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    file_keys = {k.removeprefix("module.") for k in state}
    assert set(TwinLiteNet().state_dict()) == file_keys
