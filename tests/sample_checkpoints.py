"""Tiny weight files for the unpickler's tests and fuzz targets: built with torch.save, no download.

``yolo_like_checkpoint`` is a torch zip shaped like a YOLOv5 checkpoint (stubbed modules, a
Parameter, a buffer, yaml, names, stride); ``state_dict_file`` a torch.save'd state dict, zip or
legacy; ``pickle_in``/``with_pickle`` take out and put back an archive's data.pkl.
"""

from __future__ import annotations

import contextlib
import io
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def fake_yolo_classes() -> Iterator[tuple[type, type]]:
    """Classes that pickle as ``models.yolo.Model`` and ``models.common.Conv``, like yolov5's own;
    gone from sys.modules afterwards."""
    made = [(m, type(n, (), {"__module__": m, "__qualname__": n}))
            for m, n in (("models.yolo", "Model"), ("models.common", "Conv"))]
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


def stub_module(cls: type, **state: object) -> object:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def yolo_like_checkpoint() -> bytes:
    with fake_yolo_classes() as (model_cls, conv_cls):
        conv = stub_module(conv_cls, _parameters=OrderedDict(weight=torch.nn.Parameter(torch.arange(4.0).view(2, 2))),
                           _buffers=OrderedDict(running=torch.zeros(2)), _non_persistent_buffers_set=set(),
                           _modules=OrderedDict())
        model = stub_module(model_cls, _parameters=OrderedDict(), _buffers=OrderedDict(),
                            _modules=OrderedDict(conv=conv), yaml={"nc": 2, "backbone": [[-1, 1, "Conv", [8]]],
                                                                  "head": [], "anchors": [[1, 2]]},
                            names=["a", "b"], stride=torch.tensor([8.0, 16.0]))
        buf = io.BytesIO()
        torch.save({"model": model, "epoch": -1}, buf)
    return buf.getvalue()


def state_dict_file(legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    sd = OrderedDict(w=torch.arange(6.0).view(2, 3), b=torch.ones(3, dtype=torch.float16),
                     n=torch.tensor(7), v=torch.arange(4.0)[1:3])
    torch.save({"state_dict": sd}, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def pickle_in(archive: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def with_pickle(archive: bytes, data_pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()
