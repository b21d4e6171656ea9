"""Reading weight files safely, with errors a user can act on."""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from segengine.errors import ModelError
from segengine.models.pickle_guards import MAX_PICKLE_BYTES, GlobalRef, scan, short_text
from segengine.models.safe_pickle import MAX_STORAGE_BYTES, STORAGE_DTYPES, ZIP_ERRORS

# What torch.load raises on damaged files: its own checks (RuntimeError, AssertionError), the
# unpickler's, zipfile's and those of rebuild code handed wrong types or sizes.
LOAD_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
               IndexError, TypeError, AttributeError, struct.error, OverflowError, MemoryError,
               UnicodeDecodeError, NotImplementedError, AssertionError, OSError, RecursionError)
_LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, storage keys; then raw storages
_TUPLE_MAKERS = frozenset({"torch.Size"})


def load_state_dict(path: Path, *, what: str) -> dict[str, torch.Tensor]:
    """Load a plain state dict with ``weights_only=True``; no code in the file ever runs.

    ``what`` names the expected content for the error message ("TwinLiteNet weights").
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weight file (expected {what}).")
    check_torch_file(path)  # bounds torch's own loader does not check (memo, lengths, tuple depth, sizes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        raise ModelError(
            f"{path}: cannot read it as {what} ({type(exc).__name__}: {_first_line(exc)}). "
            "The file is truncated, corrupt or of another kind: delete it and fetch it again "
            "with `segengine models fetch`."
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors ({what}).")
    if not all(type(k) is str for k in obj):
        raise ModelError(f"{path}: a state dict whose keys are not all names ({what}).")
    return dict(obj.items())


def check_torch_file(path: Path) -> None:
    """Refuse a torch file whose pickles break :func:`scan`'s bounds or whose storages do not fit the file.

    torch.load allocates each storage at the size its pickle declares and trusts the pickle's memo
    indices and tuples; checking first keeps a damaged or crafted file a ModelError, not a crash.
    """
    hint = "The file is damaged or of another kind: delete it and fetch it again with `segengine models fetch`."
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
                if not infos:
                    raise ModelError(f"{path}: an empty zip file, not torch weights. {hint}")
                prefix = infos[0].filename.split("/", 1)[0] + "/"  # torch's reader: the first entry's folder
                named = {info.filename: info for info in infos}
                pkl = named.get(prefix + "data.pkl")
                if pkl is None:
                    raise ModelError(f"{path}: a zip file without {prefix}data.pkl, not torch weights. {hint}")
                if pkl.file_size > MAX_PICKLE_BYTES:
                    raise ModelError(f"{path}: refused to load: a data.pkl of {pkl.file_size} bytes. {hint}")
                with archive.open(pkl) as entry:
                    data = entry.read(MAX_PICKLE_BYTES + 1)
        except ZIP_ERRORS as exc:
            raise ModelError(f"{path}: not readable as torch weights ({type(exc).__name__}: "
                             f"{short_text(str(exc))}). {hint}") from exc
        found = scan(data, source=path, tuple_makers=_TUPLE_MAKERS)
        for pid in found.persistent_ids:
            key, nbytes = _storage_bytes(path, pid)
            info = named.get(f"{prefix}data/{key}")
            if info is None or info.file_size < nbytes:
                raise ModelError(f"{path}: storage {short_text(str(key), 40)} needs {nbytes} bytes, the archive "
                                 f"holds {info.file_size if info else 0} (truncated?). {hint}")
        return
    with open(path, "rb") as f:  # the legacy format: pickles back to back, then the raw storages
        data = f.read(MAX_PICKLE_BYTES)
    pos, total = 0, 0
    for _ in range(_LEGACY_PICKLES):
        found = scan(data, source=path, start=pos, tuple_makers=_TUPLE_MAKERS)
        pos = found.end
        for pid in found.persistent_ids:
            total += _storage_bytes(path, pid, legacy=True)[1]
    if total > size:
        raise ModelError(f"{path}: its storages need {total} bytes, more than the file's {size} (truncated?). {hint}")


def _storage_bytes(path: Path, pid: object, *, legacy: bool = False) -> tuple[str, int]:
    """The key and byte size of a torch persistent id ``('storage', torch.XStorage, key, location, numel...)``."""
    size = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage" and isinstance(pid[1], GlobalRef)
            and type(pid[2]) is str and type(pid[4]) is int):
        raise ModelError(f"{path}: refused to load: a persistent id torch never writes ({short_text(repr(pid))}).")
    stype, key, numel = pid[1], pid[2], pid[4]
    dtype = STORAGE_DTYPES.get(stype.name) if stype.module == "torch" else None
    if dtype is None:
        raise ModelError(f"{path}: refused to load: a storage of unknown type {stype.path}.")
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if not 0 <= nbytes <= MAX_STORAGE_BYTES:
        raise ModelError(f"{path}: refused to load: a storage of {numel} elements.")
    return key, nbytes


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. DataParallel's ``module.``) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, *, what: str) -> None:
    """Load ``state`` strictly into ``module``; on any mismatch name the keys and shapes that differ."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatch "
                + _few(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong)
            )
        raise ModelError(
            f"{path}: these are not {what}: {'; '.join(parts)}. "
            "Check that the file matches the model name you gave."
        )
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def _few(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
