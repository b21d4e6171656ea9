"""Property tests of the weight readers: whatever the bytes, a value or a ModelError, never anything else.

Inputs: arbitrary bytes as a pickle, mutated pickles of plain containers, mutated YOLOv5-like stub
checkpoints, mutated ``torch.save`` files (zip and legacy), arbitrary zips. The bounds these rely on
are tested one by one in tests/test_safe_pickle_bounds.py.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segengine.errors import ModelError
from segengine.models.checkpoint import load_state_dict
from segengine.models.safe_pickle import load_torch_zip, read_yolo_checkpoint, safe_loads
from tests.sample_checkpoints import pickle_in as _pickle_in
from tests.sample_checkpoints import state_dict_file, yolo_like_checkpoint
from tests.sample_checkpoints import with_pickle as _with_pickle

YOLO = yolo_like_checkpoint()
STATE = state_dict_file()
LEGACY = state_dict_file(legacy=True)
PLAIN = [pickle.dumps(obj, protocol=p) for p in (0, 2, 4, 5) for obj in (
    {"a": [1, 2.5, "x", None, True, 1 << 80], "t": (1, (2, 3)), "s": {1, 2}, "f": frozenset({"q"})},
    OrderedDict(k=complex(1, 2), r=slice(1, 5, 2), e=set(), d={}),
)] + [pickle.dumps({"b": b"y" * 300}, protocol=4)]  # bytes below protocol 3 need _codecs.encode: refused


def _mutate(base: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    """Byte replacements, insertions and deletions at positions (mod the length), then an optional cut."""
    data = bytearray(base)
    for kind, pos, value in edits:
        if not data:
            break
        pos %= len(data)
        if kind == 0:
            data[pos] = value
        elif kind == 1:
            data.insert(pos, value)
        else:
            del data[pos]
    return bytes(data[:cut] if cut is not None else data)


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)
cuts = st.none() | st.integers(0, 1 << 20)


def _value_or_model_error(read: Callable[[], object]) -> None:
    with contextlib.suppress(ModelError):
        read()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-models")


def test_the_seeds_read() -> None:
    assert all(safe_loads(p, source="p") is not None for p in PLAIN)


def test_yolo_like_checkpoint_reads(scratch: Path) -> None:
    path = scratch / "yolo.pt"
    path.write_bytes(YOLO)
    ckpt = read_yolo_checkpoint(path)
    assert set(ckpt.state_dict) == {"conv.weight", "conv.running"}
    assert ckpt.names == ("a", "b") and ckpt.stride == (8.0, 16.0) and ckpt.yaml["nc"] == 2
    sd_path = scratch / "sd.pt"
    sd_path.write_bytes(STATE)
    legacy_path = scratch / "legacy.pt"
    legacy_path.write_bytes(LEGACY)
    for p in (sd_path, legacy_path):
        assert load_state_dict(p, what="test weights")["v"].tolist() == [1.0, 2.0]


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_pickle(data: bytes) -> None:
    _value_or_model_error(lambda: safe_loads(data, source="fuzz.pkl"))


@given(st.sampled_from(PLAIN), edits, cuts)
def test_mutated_plain_pickles(base: bytes, changes: list, cut: int | None) -> None:
    data = _mutate(base, changes, cut)
    _value_or_model_error(lambda: safe_loads(data, source="fuzz.pkl"))


@given(edits, cuts)
def test_mutated_yolo_like_pickle(scratch: Path, changes: list, cut: int | None) -> None:
    path = scratch / "m.pt"
    path.write_bytes(_with_pickle(YOLO, _mutate(_pickle_in(YOLO), changes, cut)))
    _value_or_model_error(lambda: read_yolo_checkpoint(path))


@given(st.sampled_from(["yolo", "state", "legacy"]), edits, cuts)
def test_mutated_whole_files(scratch: Path, which: str, changes: list, cut: int | None) -> None:
    path = scratch / "w.pt"
    path.write_bytes(_mutate({"yolo": YOLO, "state": STATE, "legacy": LEGACY}[which], changes, cut))
    _value_or_model_error(lambda: load_state_dict(path, what="fuzz weights"))
    _value_or_model_error(lambda: read_yolo_checkpoint(path))


@given(edits, cuts)
def test_mutated_state_dict_pickle(scratch: Path, changes: list, cut: int | None) -> None:
    path = scratch / "s.pt"
    path.write_bytes(_with_pickle(STATE, _mutate(_pickle_in(STATE), changes, cut)))
    _value_or_model_error(lambda: load_state_dict(path, what="fuzz weights"))
    _value_or_model_error(lambda: load_torch_zip(path))


names = st.sampled_from(["archive/data.pkl", "archive/data/0", "archive/data/1", "archive/version", "x/data.pkl",
                         "data.pkl", "archive/data/0/", "a/b/data.pkl"])
entries = st.lists(st.tuples(names, st.binary(max_size=64) | st.sampled_from(PLAIN)), max_size=4)


@given(entries, st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
def test_arbitrary_zips(scratch: Path, files: list[tuple[str, bytes]], method: int) -> None:
    path = scratch / "z.pt"
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in dict(files).items():  # one entry per name: zipfile warns on duplicates
            z.writestr(name, data)
    _value_or_model_error(lambda: load_torch_zip(path))
    _value_or_model_error(lambda: load_state_dict(path, what="fuzz weights"))
