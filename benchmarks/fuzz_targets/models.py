"""Atheris targets for weight files: the restricted unpickler, torch zips read with it, torch.load'ed state dicts.

Each swallows only ModelError, the one error these readers document; anything else escaping, a hang
or a big allocation (benchmarks/fuzz.py's --rss-mb) is a crash.

* ``safe_loads``: the bytes are a data.pkl, unpickled with no archive behind it;
* ``yolo_pickle``: the bytes are the data.pkl of a small YOLOv5-like zip (stubs, tensors, yaml), read
  with read_yolo_checkpoint: the fuzzer reaches tensor rebuilding and the model-tree walk;
* ``torch_zip``: the bytes are the whole .pt file, read with read_yolo_checkpoint;
* ``state_dict_pickle``: the bytes are the data.pkl of a torch.save'd state dict, read with load_state_dict;
* ``state_dict``: the bytes are the whole file (zip or legacy), read with load_state_dict.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import pickle
import shutil
import sys
import tempfile
import types
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from segengine.errors import ModelError
from segengine.models.checkpoint import load_state_dict
from segengine.models.safe_pickle import read_yolo_checkpoint, safe_loads

_SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


@contextlib.contextmanager
def _fake_yolo_classes() -> Iterator[tuple[type, type]]:
    """Classes that pickle as ``models.yolo.Model`` / ``models.common.Conv``; gone from sys.modules after."""
    made = [(m, type(n, (), {"__module__": m, "__qualname__": n})) for m, n in
            (("models.yolo", "Model"), ("models.common", "Conv"))]
    saved = {m: sys.modules.get(m) for m in ("models", "models.yolo", "models.common")}
    sys.modules["models"] = types.ModuleType("models")  # a parent package pickle can import, not ours
    for m, cls in made:
        sys.modules[m] = types.ModuleType(m)
        setattr(sys.modules[m], cls.__qualname__, cls)
    try:
        yield made[0][1], made[1][1]
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = old


def _module(cls: type, **state: object) -> object:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _yolo_like() -> bytes:
    with _fake_yolo_classes() as (model_cls, conv_cls):
        conv = _module(conv_cls, _parameters=OrderedDict(weight=torch.nn.Parameter(torch.arange(4.0).view(2, 2))),
                       _buffers=OrderedDict(running=torch.zeros(2)), _non_persistent_buffers_set=set(),
                       _modules=OrderedDict())
        model = _module(model_cls, _parameters=OrderedDict(), _buffers=OrderedDict(), _modules=OrderedDict(c=conv),
                        yaml={"nc": 2, "backbone": [[-1, 1, "Conv", [8]]], "head": []}, names=["a", "b"],
                        stride=torch.tensor([8.0, 16.0]))
        buf = io.BytesIO()
        torch.save({"model": model}, buf)
    return buf.getvalue()


def _state_dict(legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(OrderedDict(w=torch.arange(6.0).view(2, 3), n=torch.tensor(7), v=torch.arange(4.0)[1:3]), buf,
               _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _pickle_in(archive: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _with_pickle(archive: bytes, data_pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()


_YOLO = _yolo_like()
_STATE = _state_dict()
_LEGACY = _state_dict(legacy=True)


def _on_file(data: bytes, read: Callable[[Path], object]) -> None:
    path = _SCRATCH / "input.pt"
    path.write_bytes(data)
    with contextlib.suppress(ModelError):
        read(path)


def fuzz_safe_loads(data: bytes) -> None:
    with contextlib.suppress(ModelError):
        safe_loads(data, source="fuzz.pkl")


def fuzz_yolo_pickle(data: bytes) -> None:
    _on_file(_with_pickle(_YOLO, data), read_yolo_checkpoint)


def fuzz_torch_zip(data: bytes) -> None:
    _on_file(data, read_yolo_checkpoint)


def fuzz_state_dict_pickle(data: bytes) -> None:
    _on_file(_with_pickle(_STATE, data), lambda p: load_state_dict(p, what="fuzz weights"))


def fuzz_state_dict(data: bytes) -> None:
    _on_file(data, lambda p: load_state_dict(p, what="fuzz weights"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "safe_loads": fuzz_safe_loads, "yolo_pickle": fuzz_yolo_pickle, "torch_zip": fuzz_torch_zip,
    "state_dict_pickle": fuzz_state_dict_pickle, "state_dict": fuzz_state_dict,
}
_PLAIN = [pickle.dumps({"a": [1, 2.5, "x", None, (1, (2,))], "s": {1}, "o": OrderedDict(k=complex(1, 2))},
                       protocol=p) for p in (0, 2, 4)]
SEEDS: dict[str, list[bytes]] = {
    "safe_loads": [*_PLAIN, _pickle_in(_YOLO)],
    "yolo_pickle": [_pickle_in(_YOLO)],
    "torch_zip": [_YOLO],
    "state_dict_pickle": [_pickle_in(_STATE)],
    "state_dict": [_STATE, _LEGACY],
}
