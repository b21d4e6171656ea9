"""The restricted unpickler: reads yolov5's checkpoint, runs no code from any file."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from segengine.errors import ModelError
from segengine.models.safe_pickle import Stub, StubAttribute, load_torch_zip, read_yolo_checkpoint, safe_loads

# What each refusal must name (protocol 2 writes subprocess as Python 2's ``commands``).
NAMED = {"system": "system", "eval": "eval", "exec": "exec", "subprocess": ".call",
         "__import__": "__import__", "getattr": "getattr"}


def _payloads(marker: Path) -> dict[str, tuple]:
    """Reductions that would create ``marker`` if anything ran them."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "system": (os.system, (f"touch {marker}",)),
        "eval": (builtins.eval, (code,)),
        "exec": (builtins.exec, (code,)),
        "subprocess": (subprocess.call, (["touch", str(marker)],)),
        "__import__": (builtins.__import__, ("os",)),
        "getattr": (getattr, (OrderedDict, "fromkeys")),
    }


class _Evil:
    def __init__(self, reduction: tuple) -> None:
        self.reduction = reduction

    def __reduce__(self) -> tuple:
        return self.reduction


@pytest.fixture(scope="module")
def checkpoint(shared: Path):
    return read_yolo_checkpoint(shared / "models" / "yolov5s-seg.pt")


def test_reads_yolov5_checkpoint(checkpoint) -> None:
    sd = checkpoint.state_dict
    assert len(sd) == 367
    assert sd["model.0.conv.weight"].shape == (32, 3, 6, 6)
    assert sd["model.0.conv.weight"].dtype == torch.float16
    assert sd["model.24.m.0.weight"].shape == (351, 128, 1, 1)
    assert sd["model.24.proto.cv3.conv.weight"].shape == (32, 128, 1, 1)
    assert sd["model.0.bn.num_batches_tracked"].dtype == torch.int64
    # anchors are stored in stride units: P3's first anchor is 10x13 px at stride 8
    assert sd["model.24.anchors"][0, 0].tolist() == [1.25, 1.625]
    assert checkpoint.stride == (8.0, 16.0, 32.0)
    assert checkpoint.yaml["nc"] == 80 and checkpoint.yaml["width_multiple"] == 0.5
    assert checkpoint.yaml["head"][-1][2] == "Segment"
    assert len(checkpoint.names) == 80 and checkpoint.names[:3] == ("person", "bicycle", "car")


def test_segment_head_getattr_becomes_inert_record(shared: Path) -> None:
    ckpt = load_torch_zip(shared / "models" / "yolov5s-seg.pt")
    head = ckpt["model"].attr("_modules")["model"].attr("_modules")["24"]
    assert isinstance(head, Stub) and head.path == "models.yolo.Segment"
    assert isinstance(head.attr("detect"), StubAttribute)  # upstream pickles Detect.forward via getattr
    assert head.attr("detect").path == "models.yolo.Detect.forward"


@pytest.mark.parametrize("kind", ["system", "eval", "exec", "subprocess", "__import__", "getattr"])
def test_plain_pickle_that_runs_code_is_refused(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    func, args = _payloads(marker)[kind]
    data = pickle.dumps({"model": _Evil((func, args))}, protocol=2)
    with pytest.raises(ModelError, match="refused") as info:
        safe_loads(data, source="evil.pkl")
    assert "evil.pkl" in str(info.value)
    assert NAMED[kind] in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["system", "eval", "subprocess"])
def test_torch_zip_that_runs_code_is_refused(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    # A checkpoint that looks like yolov5's, with a payload next to real tensors.
    torch.save({"model": _Evil(_payloads(marker)[kind]), "w": torch.ones(3)}, path)
    assert not marker.exists()
    with pytest.raises(ModelError, match="refused") as info:
        read_yolo_checkpoint(path)
    assert str(path) in str(info.value) and NAMED[kind] in str(info.value)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Evil(_payloads(marker)["system"])))
    with pytest.raises(ModelError, match="not a torch zip") as info:
        read_yolo_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_stub_attribute_is_never_called() -> None:
    # getattr(models.yolo.Detect, "forward")() : a placeholder's attribute must not run anything
    data = b"c__builtin__\ngetattr\n(cmodels.yolo\nDetect\nVforward\ntR(tR."
    with pytest.raises(ModelError, match="models.yolo.Detect.forward"):
        safe_loads(data, source="x.pkl")


def test_reduce_on_stub_only_records() -> None:
    data = b"cmodels.common\nConv\n(I3\nI16\ntR(dVk\nI3\nsb."
    obj = safe_loads(data, source="x.pkl")
    assert isinstance(obj, Stub) and obj.path == "models.common.Conv"
    assert obj.stub_args == (3, 16) and obj.attr("k") == 3


def test_getattr_cannot_reach_private_names() -> None:
    data = b"c__builtin__\ngetattr\n(cmodels.yolo\nDetect\nV__init__\ntR."
    with pytest.raises(ModelError, match="getattr"):
        safe_loads(data, source="x.pkl")


def test_truncated_checkpoint_names_the_file(shared: Path, tmp_path: Path) -> None:
    raw = (shared / "models" / "yolov5s-seg.pt").read_bytes()
    for n in (len(raw) // 2, len(raw) - 100):
        path = tmp_path / f"cut{n}.pt"
        path.write_bytes(raw[:n])
        with pytest.raises(ModelError) as info:
            read_yolo_checkpoint(path)
        assert str(path) in str(info.value)


def test_truncated_storage_is_refused(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.arange(10, dtype=torch.float32)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:8] if info.filename.endswith("data/0") else data)
    assert load_torch_zip(good)["w"].tensor.tolist() == list(range(10))
    with pytest.raises(ModelError, match="bad.pt.*truncated"):
        load_torch_zip(bad)


def test_wrong_or_missing_file(shared: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no 'model'"):
        read_yolo_checkpoint(shared / "models" / "twinlitenet_best.pth")  # a plain state dict
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="garbage.pt"):
        read_yolo_checkpoint(garbage)
    with pytest.raises(ModelError, match="no such"):
        read_yolo_checkpoint(tmp_path / "absent.pt")
