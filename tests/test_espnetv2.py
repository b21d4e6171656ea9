"""ESPNetv2 (Cityscapes): our re-implementation and its ONNX export compute upstream's function."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from segengine.errors import ModelError
from segengine.models.espnetv2 import CARD, ESPNetv2Seg, load_network

REFERENCE = "reference/espnetv2_city_test1.npz"
# The reference logits are stored as float16 (spacing 2**-6 around |x| = 16..32), hence ~1e-2.
LOGIT_TOL = 1e-2
MIN_ARGMAX_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def weights(shared: Path) -> Path:
    return shared / "models" / CARD.filename


@pytest.fixture(scope="module")
def reference(shared: Path) -> dict[str, np.ndarray]:
    with np.load(shared / REFERENCE) as data:
        return {k: data[k] for k in ("input", "logits", "argmax")}


@pytest.fixture(scope="module")
def net(weights: Path) -> torch.nn.Module:
    return load_network(weights)


@pytest.fixture(scope="module")
def onnx_path(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("espnetv2") / "espnetv2.onnx"
    x = torch.zeros(1, 3, *CARD.input_size)
    torch.onnx.export(
        net, (x,), str(path), dynamo=True, external_data=False, input_names=["input"], output_names=["logits"]
    )
    return path


def _check_against_reference(logits: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    ref = reference["logits"].astype(np.float32)
    assert logits.shape == ref.shape == (1, len(CARD.classes), *CARD.input_size)
    assert logits.dtype == np.float32
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(logits - ref).max())
    assert err <= LOGIT_TOL * scale, f"max |logits - reference| = {err} (logit scale {scale})"
    agreement = float((logits.argmax(axis=1) == reference["argmax"]).mean())
    assert agreement >= MIN_ARGMAX_AGREEMENT, f"argmax agrees on only {agreement:.5%} of pixels"


def test_card_matches_weight_file(weights: Path) -> None:
    assert weights.stat().st_size == CARD.size_bytes
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == CARD.sha256
    assert len(CARD.classes) == 20 and CARD.classes[-1] == "background"


def test_torch_matches_upstream_reference(net: torch.nn.Module, reference: dict[str, np.ndarray]) -> None:
    assert not net.training
    with torch.inference_mode():
        outputs = net(torch.from_numpy(reference["input"]))
    assert isinstance(outputs, tuple) and len(outputs) == len(CARD.raw_outputs)
    _check_against_reference(outputs[0].numpy(), reference)


def test_onnx_export_matches_upstream_reference(onnx_path: Path, reference: dict[str, np.ndarray]) -> None:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    (logits,) = session.run(None, {"input": reference["input"]})
    _check_against_reference(logits, reference)


def test_other_models_weights_raise_model_error(shared: Path, tmp_path: Path) -> None:
    # A real file of another family (TwinLiteNet): wrong keys altogether.
    other = shared / "models" / "twinlitenet_best.pth"
    with pytest.raises(ModelError, match="missing keys") as exc:
        load_network(other)
    assert str(other) in str(exc.value)

    # Our own layout with one tensor of the wrong shape (e.g. a 19-class head).
    state = ESPNetv2Seg().state_dict()
    state["bu_dec_l4.merge_layer.3.weight"] = torch.zeros(19, 10, 1, 1)
    state["bu_dec_l4.merge_layer.3.bias"] = torch.zeros(19)
    wrong = tmp_path / "wrong_head.pth"
    torch.save(state, wrong)
    with pytest.raises(ModelError, match="shape mismatch") as exc:
        load_network(wrong)
    assert str(wrong) in str(exc.value) and "bu_dec_l4.merge_layer.3.weight" in str(exc.value)


def test_not_a_state_dict_raises_model_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError) as exc:
        load_network(junk)
    assert str(junk) in str(exc.value)
