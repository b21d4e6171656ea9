"""Crafted pickles and zips that once crashed, hung or exhausted memory: each is now a quick ModelError.

The cases that allocate gigabytes, segfault or hang on unbounded code run in one child process under
``RLIMIT_AS`` (2 GiB beyond what torch's import maps) and a timeout, so a regression fails here instead
of taking the machine down.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from segengine.errors import ModelError
from segengine.models import safe_pickle
from segengine.models.checkpoint import load_state_dict
from segengine.models.safe_pickle import load_torch_zip, read_yolo_checkpoint, safe_loads

P = b"\x80\x02"  # protocol 2, what torch.save writes


def _binint(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _deep_tuple_key(depth: int) -> bytes:
    return P + b"}" + b")" + b"\x85" * depth + b"Ns."  # {((((),),),): None}: hash recurses `depth` deep in C


def _tuple_dag_key(levels: int) -> bytes:
    body = b")q\x00"  # t0 = ()
    for i in range(levels):  # t(i+1) = (t(i), t(i)): 2**levels nodes for hash() to visit
        body += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1])
    return P + b"}" + body + b"Ns."


def _list_dag(levels: int) -> bytes:
    body = b"]q\x00"
    for i in range(levels):  # l(i+1) = [l(i), l(i)]: repr is 2**levels long
        body += b"]q" + bytes([i + 1]) + b"(h" + bytes([i]) + b"h" + bytes([i]) + b"e"
    return body


def _colliding_int_keys(n: int) -> bytes:
    # hash(j * (2**61 - 1)) == 0 for every j: each insert compares with all keys before it
    keys = b"".join(pickle.dumps(j * ((1 << 61) - 1), protocol=2)[2:-1] + b"N" for j in range(1, n + 1))
    return P + b"}(" + keys + b"u."


def _amplified_reduce(n: int) -> bytes:
    args = b"(" + b"N" * n + b"tq\x01"  # one big argument tuple, memoized...
    call = b"h\x00h\x01R0"  # ...and passed to the stub constructor n times: n * n copies
    return P + b"cmodels.common\nConv\nq\x00" + args + call * n + b"N."


def _zip(entries: dict[str, bytes], path: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _tensor_pickle(offset: str, size: str, stride: str, numel: int = 4) -> bytes:
    pid = b"(Vstorage\nctorch\nFloatStorage\nV0\nVcpu\nI%d\ntQ" % numel
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"I" + offset.encode() + b"\n"
            + size.encode() + stride.encode() + b"I00\nccollections\nOrderedDict\n)RtR.")


def _tuple_text(values: tuple[int, ...]) -> str:
    return "(" + "".join(f"I{v}\n" for v in values) + "t"


def _tensor_zip(tmp_path: Path, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> Path:
    data = _tensor_pickle(str(offset), _tuple_text(size), _tuple_text(stride))
    return _zip({"archive/data.pkl": data, "archive/data/0": bytes(16)}, tmp_path / "t.pt")


def _legacy_with_huge_storage(path: Path) -> Path:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(0x1234)}, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    assert raw.count(b"M\x34\x12") == 2  # the storage's numel, then the tensor's size
    path.write_bytes(raw.replace(b"M\x34\x12", _binint(0x0FFFFFFF), 1))  # 1 GiB of floats, declared
    return path


def _state_dict_zip_with(path: Path, data_pkl: bytes) -> Path:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data_pkl if info.filename.endswith("data.pkl") else src.read(info))
    return path


# name -> (reader, what to write, what the error must say: proof the bound, not an accident, stopped it)
_CHILD_CASES = {
    "memo_index_2**31": ("loads", P + b"Nr" + struct.pack("<I", 1 << 31) + b".", "memo"),
    "binbytes8_8GiB": ("loads", P + b"\x8e" + struct.pack("<Q", 8 << 30) + b"x.", "remain"),
    "binunicode8_8GiB": ("loads", P + b"\x8d" + struct.pack("<Q", 8 << 30) + b"x.", "remain"),
    "bytearray8_8GiB": ("loads", b"\x80\x05\x96" + struct.pack("<Q", 8 << 30) + b"x.", "remain"),
    "bytes(2**40)": ("loads", P + b"c__builtin__\nbytes\n" + b"\x8a\x06" + (1 << 40).to_bytes(6, "little")
                     + b"\x85R.", "refused"),
    "newobj bytes(2**40)": ("loads", P + b"c__builtin__\nbytes\n" + b"\x8a\x06" + (1 << 40).to_bytes(6, "little")
                            + b"\x85\x81.", "type"),
    "deep tuple key": ("loads", _deep_tuple_key(1_000_000), "nested"),
    "tuple DAG key": ("loads", _tuple_dag_key(60), "elements"),
    "colliding int keys": ("loads", _colliding_int_keys(60_000), "hash flooding"),
    "amplified REDUCE": ("loads", _amplified_reduce(60_000), "steps"),
    "repr of a list DAG": ("loads", P + _list_dag(60) + b"Q.", "persistent id"),
    "state dict deep tuple key": ("state_dict", _deep_tuple_key(1_000_000), "nested"),
    "legacy 8 GiB storage": ("legacy", b"", "more than the file"),
}

_CHILD = r"""
import json, resource, sys
from pathlib import Path
import torch  # before the limit: its libraries map a lot of address space
from segengine.models.checkpoint import load_state_dict
from segengine.models.safe_pickle import safe_loads
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (2 << 30), hard))
for line in sys.stdin:
    name, kind, path = json.loads(line)
    try:
        if kind == "loads":
            safe_loads(Path(path).read_bytes(), source="crafted.pkl")
        else:
            load_state_dict(Path(path), what="test weights")
        result = ["no error", ""]
    except Exception as exc:
        result = [type(exc).__name__, str(exc)]
    print(json.dumps([name, *result]), flush=True)
"""


@pytest.fixture(scope="module")
def child_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    tmp = tmp_path_factory.mktemp("crafted")
    lines = []
    for i, (name, (kind, data, _)) in enumerate(_CHILD_CASES.items()):
        path = tmp / f"case{i}.pt"
        if kind == "state_dict":
            _state_dict_zip_with(path, data)
        elif kind == "legacy":
            _legacy_with_huge_storage(path)
        else:
            path.write_bytes(data)
        lines.append(json.dumps([name, "loads" if kind == "loads" else "state_dict", str(path)]))
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD], input="\n".join(lines) + "\n", capture_output=True,
                              text=True, timeout=120)
        out, err = proc.stdout, f"exit {proc.returncode}: {proc.stderr[-800:]}"
    except subprocess.TimeoutExpired as exc:
        out, err = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timed out"
    results = {json.loads(line)[0]: json.loads(line)[1:] for line in out.splitlines() if line.startswith("[")}
    for name in _CHILD_CASES:
        results.setdefault(name, ["crashed or hung", err])
    return results


@pytest.mark.parametrize("name", list(_CHILD_CASES))
def test_crafted_allocation_crash_or_hang_is_a_model_error(name: str, child_results: dict[str, list[str]]) -> None:
    kind, message = child_results[name]
    assert kind == "ModelError", f"{name}: {kind}: {message[:300]}"
    assert _CHILD_CASES[name][2] in message, message[:300]
    assert "MemoryError" not in message


# --- cases safe to run in this process ----------------------------------------------------------


def test_build_cannot_rewrite_the_tensor_builders_defaults(tmp_path: Path) -> None:
    evil = b"ctorch._utils\n_rebuild_tensor_v2\n(N}(V__defaults__\n(I1\nI1\nI1\ntutb."
    with pytest.raises(ModelError, match="BUILD on torch._utils._rebuild_tensor_v2"):
        safe_loads(evil, source="x.pkl")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3.0)}, good)
    assert load_torch_zip(good)["w"].tensor.tolist() == [0.0, 1.0, 2.0]  # no builder was changed


@pytest.mark.parametrize("target", [b"cbuiltins\nset\n", b"ctorch\nFloatStorage\n"])
def test_build_on_handed_out_globals_is_refused(target: bytes) -> None:
    with pytest.raises(ModelError, match="BUILD"):
        safe_loads(target + b"(N}(Vx\nI1\ndtb.", source="x.pkl")


@pytest.fixture()
def fake_classes(monkeypatch: pytest.MonkeyPatch):
    """Classes that pickle as ``models.yolo.Model`` / ``models.common.Conv``, like yolov5's."""
    def make(module: str, name: str) -> type:
        mod = types.ModuleType(module)
        cls = type(name, (), {"__module__": module, "__qualname__": name})
        setattr(mod, name, cls)
        monkeypatch.setitem(sys.modules, module, mod)
        return cls
    return make("models.yolo", "Model"), make("models.common", "Conv")


class _WithState:
    """Pickles as ``cls()`` then BUILD ``state`` (any shape, e.g. a (dict, slotstate) tuple)."""

    def __init__(self, cls: type, state: object) -> None:
        self.cls, self.state = cls, state

    def __reduce__(self) -> tuple:
        return self.cls, (), self.state


def _module(cls: type, **state: object) -> object:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


YAML = {"nc": 1, "backbone": [], "head": []}


def _cases(model_cls: type, conv_cls: type) -> dict[str, tuple[object, str]]:
    shadow = OrderedDict(model=_module(model_cls, yaml=YAML))
    shadow.get = _module(conv_cls)  # an instance attribute named like the method the reader calls
    loop = _module(model_cls, yaml=YAML)
    loop._modules = {"m": loop}
    cyc: list = []
    cyc.append(cyc)
    return {
        "OrderedDict BUILD shadowing get": (shadow, "no tensors"),
        "state with a list as its dict": ({"model": _WithState(model_cls, ([1], {}))}, "architecture"),
        "nc a string": ({"model": _module(model_cls, yaml={**YAML, "nc": "abc"})}, "class count"),
        "nc 10**12": ({"model": _module(model_cls, yaml={**YAML, "nc": 10**12})}, "class count"),
        "self-containing module": ({"model": loop}, "module tree"),
        "self-containing yaml": ({"model": _module(model_cls, yaml={**YAML, "head": cyc},
                                                   _parameters={"w": None})}, "no tensors|nested deeper"),
        "parameters a list": ({"model": _module(model_cls, yaml=YAML, _parameters=[1])}, "not a dict"),
        "skip set a stub": ({"model": _module(model_cls, yaml=YAML, _non_persistent_buffers_set=_module(conv_cls))},
                            "not a set"),
        "parameter key an int": ({"model": _module(model_cls, yaml=YAML, _parameters={3: None})}, "not a name"),
        "names a deep list": ({"model": _module(model_cls, yaml=YAML, names=cyc)}, "no tensors"),
    }


_CASE_NAMES = list(_cases(type("A", (), {}), type("B", (), {})))


@pytest.mark.parametrize("label", _CASE_NAMES)
def test_damaged_yolo_structures_are_model_errors(label: str, fake_classes, tmp_path: Path) -> None:
    obj, match = _cases(*fake_classes)[label]
    path = _zip({"archive/data.pkl": pickle.dumps(obj, protocol=2)}, tmp_path / "m.pt")
    with pytest.raises(ModelError, match=match) as info:
        read_yolo_checkpoint(path)
    assert str(path) in str(info.value)


def test_self_containing_yaml_is_bounded(tmp_path: Path) -> None:
    from segengine.models.safe_pickle import _plain

    loop: list = []
    loop.append(loop)
    with pytest.raises(ModelError, match="nested deeper"):
        _plain({"head": loop})


@pytest.mark.parametrize("offset, size, stride, match", [
    (0, (4,), (-1,), "bad layout"),
    (0, (1 << 40,), (0,), "viewing a storage"),  # a broadcast view: 4 floats posing as 2**40
    (0, (1 << 40, 1 << 40), (0, 0), "viewing a storage"),
    (0, (1 << 63,), (1,), "bad layout"),  # beyond int64
    (5, (0,), (1,), "offset"),
    (3, (2,), (1,), "reaching element"),
    (0, (1,) * 65, (1,) * 65, "bad layout"),
])
def test_bad_tensor_layouts_are_refused(offset: int, size: tuple, stride: tuple, match: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=match):
        load_torch_zip(_tensor_zip(tmp_path, offset, size, stride))


def test_good_tensor_layout_reads(tmp_path: Path) -> None:
    t = load_torch_zip(_tensor_zip(tmp_path, 1, (3,), (1,))).tensor
    assert t.shape == (3,) and t.tolist() == [0.0, 0.0, 0.0]


def test_zip_bomb_storage_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_pickle, "MAX_STORAGE_BYTES", 1 << 20)
    data = _tensor_pickle("0", _tuple_text((4,)), _tuple_text((1,)), numel=4)
    path = _zip({"archive/data.pkl": data, "archive/data/0": bytes(8 << 20)}, tmp_path / "b.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelError, match="zip bomb"):
        load_torch_zip(path)


def test_zip_bomb_pickle_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_BYTES", 1 << 20)
    path = _zip({"archive/data.pkl": b"N" * (8 << 20) + b"."}, tmp_path / "b.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelError, match="zip bomb"):
        load_torch_zip(path)


def _patch_zip(path: Path, method: int | None = None, flags: int | None = None) -> Path:
    raw = bytearray(path.read_bytes())
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.find(sig)
        if method is not None:
            raw[at + method_at: at + method_at + 2] = struct.pack("<H", method)
        if flags is not None:
            raw[at + flag_at: at + flag_at + 2] = struct.pack("<H", flags)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("label, method, flags", [
    ("unsupported compression", 99, None),  # NotImplementedError
    ("encrypted", None, 1),  # RuntimeError: password required
    ("bzip2 header on deflate data", 12, None),  # OSError from bz2
    ("lzma header on stored data", 14, None),  # lzma / struct errors
])
def test_zip_library_errors_are_model_errors(label: str, method: int | None, flags: int | None,
                                             tmp_path: Path) -> None:
    path = _patch_zip(_zip({"archive/data.pkl": pickle.dumps({"a": 1}, protocol=2)}, tmp_path / "z.pt"),
                      method, flags)
    with pytest.raises(ModelError, match="z.pt"):
        load_torch_zip(path)
    with pytest.raises(ModelError, match="z.pt"):
        load_state_dict(path, what="test weights")


def test_bad_deflate_data_is_a_model_error(tmp_path: Path) -> None:
    path = _zip({"archive/data.pkl": pickle.dumps(list(range(500)), protocol=2)}, tmp_path / "z.pt",
                zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    raw[40:60] = b"\xff" * 20  # inside the compressed stream: zlib.error
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="z.pt"):
        load_torch_zip(path)


def test_state_dict_keys_must_be_names(tmp_path: Path) -> None:
    path = tmp_path / "k.pt"
    torch.save({(1, 2): torch.ones(1)}, path)
    with pytest.raises(ModelError, match="keys"):
        load_state_dict(path, what="test weights")


def test_state_dict_storage_beyond_the_record_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(0x1234)}, buf)
    with zipfile.ZipFile(buf) as src:
        data = src.read("archive/data.pkl")
    assert data.count(b"M\x34\x12") == 2
    path = _state_dict_zip_with(tmp_path / "s.pt", data.replace(b"M\x34\x12", _binint(0x0FFFFFFF), 1))
    with pytest.raises(ModelError, match="truncated"):
        load_state_dict(path, what="test weights")
