"""Read pickled torch checkpoints of foreign code bases without running any of their code.

A YOLOv5 ``.pt`` file is a pickle of the yolov5 repository's own classes
(``models.yolo.SegmentationModel``, ``models.common.Conv``...). ``torch.load`` would import
them and call whatever the pickle names. :class:`SafeUnpickler` instead

* turns every class of an allow-listed code base into an inert :class:`Stub` that only
  records its class path, constructor arguments and pickled state;
* rebuilds tensors itself from the zip's ``data/`` entries (no torch rebuild code runs);
* gives real objects only for plain containers (``OrderedDict``, ``set``...);
* refuses every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``...) with
  a :class:`~engine.errors.ModelError` naming the file and the global.

The only callables the pickle can ever reach are the ones :meth:`SafeUnpickler.find_class`
hands out, so REDUCE can call nothing but stub constructors, container constructors and
our own tensor builders (:mod:`models.pickle_builders`: bounded arguments, inert under BUILD).

A damaged or hostile file must also not exhaust memory or time: :func:`models.pickle_guards.scan`
checks the pickle's memo, declared lengths, tuple depth, hashing and total work before it is
unpickled; zip entries are capped and read bounded; tensor layouts, the module tree and the
metadata walk are bounded. Every failure is a ModelError naming the file.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segengine.errors import ModelError
from segengine.models.pickle_builders import (
    SAFE_GLOBALS,
    Builder,
    Refused,
    SafeOrderedDict,
    StorageType,
    TensorRef,
    _rebuild_parameter,
    _rebuild_tensor,
    _Storage,
)
from segengine.models.pickle_guards import MAX_PICKLE_BYTES, scan, short_repr, short_text

__all__ = ["SAFE_GLOBALS", "SafeOrderedDict", "SafeUnpickler", "Stub", "StubAttribute", "TensorRef",
           "load_torch_zip", "read_yolo_checkpoint", "safe_loads"]

_Refused = Refused
# Classes of these code bases become inert stubs (never imported, never built).
STUB_PREFIXES = ("models.", "utils.", "torch.nn.modules.", "numpy.", "pathlib.", "argparse.")
STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
MAX_STORAGE_BYTES = 4 << 30  # one tensor storage
MAX_TOTAL_STORAGE_BYTES = 16 << 30  # all of one file's storages: a zip bomb stops here
# Errors zipfile raises on damaged archives (besides BadZipFile): unsupported compression,
# encrypted entries, bad deflate data, bad headers, zip64 fields, undecodable names.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError,
              NotImplementedError, zlib.error, struct.error, OverflowError, UnicodeDecodeError, KeyError)


class Stub:
    """Inert record of a pickled object of a class we never import."""

    path = "?"  # "module.Class", set on each per-class subclass
    bounded_repr = True

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        obj = object.__new__(cls)
        obj.__dict__["stub_args"] = args
        obj.__dict__["stub_kwargs"] = kwargs
        obj.__dict__["stub_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): record only
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD: store, never set attributes
        self.__dict__["stub_state"] = state

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute from the pickled ``__dict__`` (nn.Module state), else ``default``."""
        state = self.__dict__["stub_state"]
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate): look in both, copy neither
            for part in (state[1], state[0]):
                if isinstance(part, Mapping) and name in part:
                    return part[name]
            return default
        return state.get(name, default) if isinstance(state, Mapping) else default

    def __repr__(self) -> str:
        return f"<Stub {short_text(self.path, 120)}>"


class StubAttribute:
    """What ``getattr(StubClass, "name")`` gives: a name, never callable."""

    __slots__ = ("path",)
    bounded_repr = True

    def __init__(self, owner: str, name: str) -> None:
        self.path = f"{owner}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused(f"a call of {short_text(self.path, 120)}")

    def __setstate__(self, state: Any) -> None:
        raise _Refused("BUILD on a stub attribute")

    def __repr__(self) -> str:
        return f"<StubAttribute {short_text(self.path, 120)}>"


def _safe_getattr(obj: Any, name: Any, *default: Any) -> StubAttribute:
    # yolov5's Segment pickles ``Detect.forward`` as getattr(models.yolo.Detect, "forward").
    # Only a name on a stub class is allowed; nothing real is looked up.
    if isinstance(obj, type) and issubclass(obj, Stub) and isinstance(name, str) and name.isidentifier() \
            and not name.startswith("_"):
        return StubAttribute(obj.path, name)
    raise _Refused(f"the global builtins.getattr on {type(obj).__name__} {short_repr(name)}")


_GETATTR = Builder("builtins.getattr", _safe_getattr)
_REBUILD_TENSOR = Builder("torch._utils._rebuild_tensor_v2", _rebuild_tensor)
_REBUILD_PARAMETER = Builder("torch._utils._rebuild_parameter", _rebuild_parameter)
_STORAGE_TYPES = {name: StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that builds stubs and tensors only; see the module docstring.

    Call it through :func:`safe_loads`, which first checks the pickle's bounds (:func:`scan`).
    """

    def __init__(self, file: io.BufferedIOBase, *, source: Path | str,
                 read_record: Any = None) -> None:
        super().__init__(file)
        self._source = source
        self._read_record = read_record  # key -> bytes, for a torch zip's data/ entries
        self._stubs: dict[str, type[Stub]] = {}
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        path = short_text(f"{module}.{name}", 200)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module in ("builtins", "__builtin__") and name == "getattr":
            return _GETATTR
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _REBUILD_TENSOR
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _REBUILD_PARAMETER
        if module.startswith(STUB_PREFIXES) and name.isidentifier() and len(module) + len(name) < 512:
            if path not in self._stubs:
                self._stubs[path] = type(name, (Stub,), {"path": path, "__module__": __name__})
            return self._stubs[path]
        raise _Refused(f"the global {path}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"a persistent id {short_repr(pid)}")
        _, stype, key, _location, numel = pid
        if self._read_record is None:
            raise _Refused("a tensor storage outside a torch zip file")
        if not isinstance(stype, StorageType) or type(key) is not str or type(numel) is not int:
            raise _Refused(f"a storage of kind {short_repr(stype)}")
        if key not in self._storages:
            itemsize = torch.empty(0, dtype=stype.dtype).element_size()
            if numel < 0 or numel * itemsize > MAX_STORAGE_BYTES:
                raise _Refused(f"a storage of {numel} elements")
            raw = self._read_record(key)
            if len(raw) < numel * itemsize:
                raise _Refused(f"storage {short_repr(key)} with {len(raw)} bytes for {numel} elements (truncated)")
            flat = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=stype.dtype) if numel \
                else torch.empty(0, dtype=stype.dtype)
            self._storages[key] = _Storage(flat)
        return self._storages[key]


def safe_loads(data: bytes, *, source: Path | str, read_record: Any = None) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; any refusal or damage is a ModelError."""
    scan(data, source=source)  # memo, lengths, tuple depth, hashing, work: refused before any allocation
    try:
        return SafeUnpickler(io.BytesIO(data), source=source, read_record=read_record).load()
    except _Refused as exc:
        raise ModelError(
            f"{source}: refused to load: the pickle asks for {short_text(str(exc), 300)}, which a "
            "checkpoint never needs and could run code or exhaust memory. "
            "Only fetch weights from the source the model card names."
        ) from None
    except ModelError:
        raise
    except Exception as exc:  # damaged pickles raise anything from EOFError to TypeError or RecursionError
        raise ModelError(f"{source}: the pickle inside is damaged "
                         f"({type(exc).__name__}: {short_text(str(exc), 200)})") from exc


def load_torch_zip(path: Path) -> Any:
    """Unpickle a torch ``.pt`` zip archive (``*/data.pkl`` + ``*/data/<key>``) safely."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weight file.")
    hint = ("The file is truncated, corrupt or of another kind: delete it and fetch it again "
            "with `segengine models fetch`.")
    try:
        archive = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise ModelError(f"{path}: not a torch zip checkpoint ({type(exc).__name__}: {short_text(str(exc))}). "
                         f"{hint}") from exc
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ModelError(f"{path}: a zip file, but not a torch checkpoint (no single */data.pkl). {hint}")
        prefix = pkls[0][: -len("data.pkl")]
        total = [0]

        def read(info: zipfile.ZipInfo, cap: int) -> bytes:
            if info.file_size > cap:
                raise _Refused(f"{info.filename} of {info.file_size} bytes (more than {cap}; a zip bomb?)")
            with archive.open(info) as entry:
                data = entry.read(info.file_size + 1)  # bounded even if the header lies
            if len(data) != info.file_size:
                raise zipfile.BadZipFile(f"{info.filename} holds {len(data)} bytes, its header says {info.file_size}")
            return data

        def read_record(key: str) -> bytes:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise _Refused(f"storage {short_repr(key)}, which the archive does not hold (truncated?)")
            total[0] += info.file_size
            if total[0] > MAX_TOTAL_STORAGE_BYTES:
                raise _Refused(f"storages of more than {MAX_TOTAL_STORAGE_BYTES} bytes in all (a zip bomb?)")
            return read(info, MAX_STORAGE_BYTES)

        try:
            data = read(infos[pkls[0]], MAX_PICKLE_BYTES)
        except _Refused as exc:
            raise ModelError(f"{path}: refused to load: {exc}. {hint}") from None
        except ZIP_ERRORS as exc:
            raise ModelError(f"{path}: cannot read {pkls[0]} ({type(exc).__name__}: {short_text(str(exc))}). "
                             f"{hint}") from exc
        try:
            return safe_loads(data, source=path, read_record=read_record)
        except ModelError as exc:
            cause = exc.__cause__
            if isinstance(cause, ZIP_ERRORS) and not isinstance(cause, (KeyError, ValueError, RuntimeError)):
                raise ModelError(f"{path}: {type(cause).__name__}: {short_text(str(cause))}. {hint}") from cause
            raise


# --- YOLOv5 checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True)
class YoloCheckpoint:
    state_dict: dict[str, torch.Tensor]  # as stored (fp16 for released weights)
    yaml: dict[str, Any]  # the architecture dict (nc, depth_multiple, width_multiple, anchors, backbone, head)
    names: tuple[str, ...]  # class names, index order
    stride: tuple[float, ...]  # detection strides, e.g. (8, 16, 32)


MAX_MODULES = 1 << 16  # modules visited flattening a model tree (shared children count each time)
MAX_MODULE_DEPTH = 64  # yolov5 nests 4 deep
MAX_METADATA_NODES = 1 << 18  # values visited turning metadata (yaml, stride) into plain data
MAX_METADATA_DEPTH = 64
MAX_METADATA_ELEMENTS = 1 << 16  # tensor elements in metadata (stride is 3 numbers)
MAX_CLASSES = 1 << 16


def module_state_dict(stub: Stub, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a stubbed nn.Module tree into ``{dotted.name: tensor}``, like ``state_dict()``.

    A crafted tree may share or contain itself: depth and visits are bounded (a ModelError).
    """
    out: dict[str, torch.Tensor] = {}
    todo: list[tuple[Stub, str, int]] = [(stub, prefix, 0)]
    visits = 0
    while todo:
        node, pre, depth = todo.pop()
        visits += 1
        if visits > MAX_MODULES or depth > MAX_MODULE_DEPTH:
            raise ModelError(f"{pre or 'the model'}: a module tree deeper than {MAX_MODULE_DEPTH} or of more "
                             f"than {MAX_MODULES} modules (shared or self-containing?)")
        skip = node.attr("_non_persistent_buffers_set") or ()
        if type(skip) not in (set, frozenset, list, tuple):
            raise ModelError(f"{pre}_non_persistent_buffers_set is a {type(skip).__name__}, not a set")
        for kind in ("_parameters", "_buffers"):
            for name, value in _entries(node, kind, pre):
                if value is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(value, TensorRef):
                    raise ModelError(f"{pre}{name} holds a {type(value).__name__}, not a tensor")
                out[pre + name] = value.tensor
        children = []
        for name, child in _entries(node, "_modules", pre):
            if child is None:
                continue
            if not isinstance(child, Stub):
                raise ModelError(f"{pre}{name} is a {type(child).__name__}, not a module")
            children.append((child, f"{pre}{name}.", depth + 1))
        todo.extend(reversed(children))  # depth first, in order, like state_dict()
    return out


def _entries(node: Stub, kind: str, prefix: str) -> list[tuple[str, Any]]:
    table = node.attr(kind) or {}
    if not isinstance(table, Mapping):
        raise ModelError(f"{prefix or 'the model'}: its {kind} is a {type(table).__name__}, not a dict")
    items = list(dict.items(table)) if isinstance(table, dict) else list(table.items())
    for name, _ in items:
        if type(name) is not str or len(name) > 256:
            raise ModelError(f"{prefix or 'the model'}: its {kind} has a key {short_repr(name)}, not a name")
    return items


def _plain(value: Any) -> Any:
    """TensorRefs to lists of numbers, so metadata holds plain Python data only (bounded: a ModelError)."""
    budget = [MAX_METADATA_NODES, MAX_METADATA_ELEMENTS]
    return _plain_at(value, 0, budget)


def _plain_at(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_METADATA_DEPTH:
        raise ModelError(f"metadata nested deeper than {MAX_METADATA_DEPTH} or of more than "
                         f"{MAX_METADATA_NODES} values (shared or self-containing?)")
    if isinstance(value, TensorRef):
        budget[1] -= value.tensor.numel()
        if budget[1] < 0:
            raise ModelError(f"metadata holding tensors of more than {MAX_METADATA_ELEMENTS} elements")
        return value.tensor.float().tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_at(v, depth + 1, budget) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain_at(v, depth + 1, budget) for k, v in dict.items(value)} if isinstance(value, dict) \
            else {k: _plain_at(v, depth + 1, budget) for k, v in value.items()}
    return value


def read_yolo_checkpoint(path: Path) -> YoloCheckpoint:
    """Weights and architecture of a YOLOv5 ``.pt`` checkpoint, read without its code base."""
    path = Path(path)
    ckpt = load_torch_zip(path)
    if not isinstance(ckpt, Mapping):
        raise ModelError(f"{path}: holds a {type(ckpt).__name__}, not a YOLOv5 checkpoint dict.")
    model = ckpt.get("ema") or ckpt.get("model")  # upstream prefers the EMA weights when present
    if not isinstance(model, Stub):
        keys = [short_repr(k, 40) for k, _ in zip(ckpt, range(8))]
        raise ModelError(f"{path}: no 'model' in the checkpoint (keys: {', '.join(keys)}).")
    yaml = model.attr("yaml")
    if not isinstance(yaml, Mapping) or not all(k in yaml for k in ("backbone", "head", "nc")):
        raise ModelError(f"{path}: the model ({model.path}) carries no architecture dict ('yaml').")
    nc = yaml["nc"]
    if type(nc) is not int or not 1 <= nc <= MAX_CLASSES:
        raise ModelError(f"{path}: the architecture's class count nc is {short_repr(nc)}, "
                         f"not a whole number from 1 to {MAX_CLASSES}.")
    try:
        state = module_state_dict(model)
        stride = _plain(model.attr("stride"))
        plain_yaml = _plain(yaml)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if not state:
        raise ModelError(f"{path}: the model holds no tensors.")
    names = model.attr("names")
    if isinstance(names, Mapping) and len(names) == nc and all(type(k) is int for k in names):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, (list, tuple)) or len(names) != nc or not all(type(n) is str for n in names):
        names = [str(i) for i in range(nc)]
    if not isinstance(stride, (list, tuple)) or not all(type(s) in (int, float) for s in stride):
        stride = ()
    return YoloCheckpoint(state, plain_yaml, tuple(names), tuple(float(s) for s in stride))
