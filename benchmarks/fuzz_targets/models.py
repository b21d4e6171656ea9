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
import pickle
import shutil
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from segengine.errors import ModelError
from segengine.models.checkpoint import load_state_dict
from segengine.models.safe_pickle import read_yolo_checkpoint, safe_loads

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, when run as a script
from tests.sample_checkpoints import pickle_in, state_dict_file, with_pickle, yolo_like_checkpoint  # noqa: E402

_SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


_YOLO = yolo_like_checkpoint()
_STATE = state_dict_file()
_LEGACY = state_dict_file(legacy=True)


def _on_file(data: bytes, read: Callable[[Path], object]) -> None:
    path = _SCRATCH / "input.pt"
    path.write_bytes(data)
    with contextlib.suppress(ModelError):
        read(path)


def fuzz_safe_loads(data: bytes) -> None:
    with contextlib.suppress(ModelError):
        safe_loads(data, source="fuzz.pkl")


def fuzz_yolo_pickle(data: bytes) -> None:
    _on_file(with_pickle(_YOLO, data), read_yolo_checkpoint)


def fuzz_torch_zip(data: bytes) -> None:
    _on_file(data, read_yolo_checkpoint)


def fuzz_state_dict_pickle(data: bytes) -> None:
    _on_file(with_pickle(_STATE, data), lambda p: load_state_dict(p, what="fuzz weights"))


def fuzz_state_dict(data: bytes) -> None:
    _on_file(data, lambda p: load_state_dict(p, what="fuzz weights"))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "safe_loads": fuzz_safe_loads, "yolo_pickle": fuzz_yolo_pickle, "torch_zip": fuzz_torch_zip,
    "state_dict_pickle": fuzz_state_dict_pickle, "state_dict": fuzz_state_dict,
}
_PLAIN = [pickle.dumps({"a": [1, 2.5, "x", None, (1, (2,))], "s": {1}, "o": OrderedDict(k=complex(1, 2))},
                       protocol=p) for p in (0, 2, 4)]
SEEDS: dict[str, list[bytes]] = {
    "safe_loads": [*_PLAIN, pickle_in(_YOLO)],
    "yolo_pickle": [pickle_in(_YOLO)],
    "torch_zip": [_YOLO],
    "state_dict_pickle": [pickle_in(_STATE)],
    "state_dict": [_STATE, _LEGACY],
}
