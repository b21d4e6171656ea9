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
our own tensor builders.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segengine.errors import ModelError

# Classes of these code bases become inert stubs (never imported, never built).
STUB_PREFIXES = ("models.", "utils.", "torch.nn.modules.", "numpy.", "pathlib.", "argparse.")
# Real objects that are safe: constructors of plain data that run no foreign code.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    **{(mod, name): obj for mod in ("builtins", "__builtin__") for name, obj in {
        "set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple,
        "int": int, "float": float, "complex": complex, "bool": bool, "str": str, "bytes": bytes,
        "slice": slice}.items()},
}
STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
MAX_STORAGE_BYTES = 4 << 30


class Stub:
    """Inert record of a pickled object of a class we never import."""

    path = "?"  # "module.Class", set on each per-class subclass

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        obj = object.__new__(cls)
        obj.__dict__["stub_args"] = args
        obj.__dict__["stub_kwargs"] = kwargs
        obj.__dict__["stub_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): record only
        pass

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.__dict__["stub_state"] = state

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute from the pickled ``__dict__`` (nn.Module state), else ``default``."""
        state = self.stub_state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
            state = {**(state[0] or {}), **state[1]}  # (dict, slotstate)
        return state.get(name, default) if isinstance(state, Mapping) else default

    def __repr__(self) -> str:
        return f"<Stub {self.path}>"


class StubAttribute:
    """What ``getattr(StubClass, "name")`` gives: a name, never callable."""

    def __init__(self, owner: str, name: str) -> None:
        self.path = f"{owner}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused(f"a call of {self.path}")

    def __repr__(self) -> str:
        return f"<StubAttribute {self.path}>"


@dataclass(frozen=True)
class StorageType:
    name: str
    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    flat: torch.Tensor  # 1-D, the storage's whole content


class TensorRef:
    """A rebuilt tensor, wrapped so that a pickled BUILD cannot reach ``Tensor.__setstate__``."""

    __slots__ = ("tensor", "is_parameter")

    def __init__(self, tensor: torch.Tensor, is_parameter: bool = False) -> None:
        self.tensor = tensor
        self.is_parameter = is_parameter

    def __setstate__(self, state: Any) -> None:
        raise _Refused("BUILD on a tensor")

    def __repr__(self) -> str:
        return f"<TensorRef {tuple(self.tensor.shape)} {self.tensor.dtype}>"


class _Refused(Exception):
    """Raised inside unpickling; turned into a ModelError naming the file."""


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> TensorRef:
    if not isinstance(storage, _Storage):
        raise _Refused(f"a tensor built on {type(storage).__name__}, not on a storage of the file")
    ints = (offset, *size, *stride)
    if not all(type(v) is int and v >= 0 for v in ints) or len(size) != len(stride):
        raise _Refused(f"a tensor with a bad layout (offset {offset!r}, size {size!r}, stride {stride!r})")
    if hooks or metadata:
        raise _Refused("a tensor with backward hooks or metadata")
    numel = storage.flat.numel()
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise _Refused(f"a tensor reaching element {last} of a storage of {numel}")
    return TensorRef(storage.flat.as_strided(tuple(size), tuple(stride), offset))


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef) or hooks or rest:
        raise _Refused("a parameter that is not a plain tensor")
    return TensorRef(data.tensor, is_parameter=True)


def _safe_getattr(obj: Any, name: Any, *default: Any) -> StubAttribute:
    # yolov5's Segment pickles ``Detect.forward`` as getattr(models.yolo.Detect, "forward").
    # Only a name on a stub class is allowed; nothing real is looked up.
    if isinstance(obj, type) and issubclass(obj, Stub) and isinstance(name, str) and not name.startswith("_"):
        return StubAttribute(obj.path, name)
    raise _Refused(f"the global builtins.getattr on {type(obj).__name__} {name!r}")


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that builds stubs and tensors only; see the module docstring."""

    def __init__(self, file: io.BufferedIOBase, *, source: Path | str,
                 read_record: Any = None) -> None:
        super().__init__(file)
        self._source = source
        self._read_record = read_record  # key -> bytes, for a torch zip's data/ entries
        self._stubs: dict[str, type[Stub]] = {}
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        path = f"{module}.{name}"
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module in ("builtins", "__builtin__") and name == "getattr":
            return _safe_getattr
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module.startswith(STUB_PREFIXES) and name.isidentifier():
            if path not in self._stubs:
                self._stubs[path] = type(name, (Stub,), {"path": path, "__module__": __name__})
            return self._stubs[path]
        raise _Refused(f"the global {path}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"a persistent id {str(pid)[:80]!r}")
        _, stype, key, _location, numel = pid
        if self._read_record is None:
            raise _Refused("a tensor storage outside a torch zip file")
        if not isinstance(stype, StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise _Refused(f"a storage of kind {stype!r}")
        if key not in self._storages:
            itemsize = torch.empty(0, dtype=stype.dtype).element_size()
            if numel < 0 or numel * itemsize > MAX_STORAGE_BYTES:
                raise _Refused(f"a storage of {numel} elements")
            raw = self._read_record(key)
            if len(raw) < numel * itemsize:
                raise _Refused(f"storage {key} with {len(raw)} bytes for {numel} elements (truncated)")
            flat = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=stype.dtype) if numel \
                else torch.empty(0, dtype=stype.dtype)
            self._storages[key] = _Storage(flat)
        return self._storages[key]


def safe_loads(data: bytes, *, source: Path | str, read_record: Any = None) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; any refusal or damage is a ModelError."""
    try:
        return SafeUnpickler(io.BytesIO(data), source=source, read_record=read_record).load()
    except _Refused as exc:
        raise ModelError(
            f"{source}: refused to load: the pickle asks for {exc}, which could run code. "
            "Only fetch weights from the source the model card names."
        ) from None
    except ModelError:
        raise
    except Exception as exc:  # damaged pickles raise anything from EOFError to TypeError
        raise ModelError(f"{source}: the pickle inside is damaged ({type(exc).__name__}: {exc})"[:400]) from exc


def load_torch_zip(path: Path) -> Any:
    """Unpickle a torch ``.pt`` zip archive (``*/data.pkl`` + ``*/data/<key>``) safely."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weight file.")
    hint = ("The file is truncated, corrupt or of another kind: delete it and fetch it again "
            "with `segengine models fetch`.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path}: not a torch zip checkpoint ({exc}). {hint}") from exc
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ModelError(f"{path}: a zip file, but not a torch checkpoint (no single */data.pkl). {hint}")
        prefix = pkls[0][: -len("data.pkl")]
        names = set(archive.namelist())

        def read_record(key: str) -> bytes:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise _Refused(f"storage {key!r}, which the archive does not hold (truncated?)")
            return archive.read(name)

        try:
            data = archive.read(pkls[0])
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelError(f"{path}: cannot read {pkls[0]} ({exc}). {hint}") from exc
        try:
            return safe_loads(data, source=path, read_record=read_record)
        except ModelError as exc:
            if isinstance(exc.__cause__, (zipfile.BadZipFile, EOFError, OSError)):
                raise ModelError(f"{path}: {exc.__cause__}. {hint}") from exc.__cause__
            raise


# --- YOLOv5 checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True)
class YoloCheckpoint:
    state_dict: dict[str, torch.Tensor]  # as stored (fp16 for released weights)
    yaml: dict[str, Any]  # the architecture dict (nc, depth_multiple, width_multiple, anchors, backbone, head)
    names: tuple[str, ...]  # class names, index order
    stride: tuple[float, ...]  # detection strides, e.g. (8, 16, 32)


def module_state_dict(stub: Stub, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a stubbed nn.Module tree into ``{dotted.name: tensor}``, like ``state_dict()``."""
    out: dict[str, torch.Tensor] = {}
    skip = stub.attr("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (stub.attr(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, TensorRef):
                raise ModelError(f"{prefix}{name} holds a {type(value).__name__}, not a tensor")
            out[prefix + name] = value.tensor
    for name, child in (stub.attr("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Stub):
            raise ModelError(f"{prefix}{name} is a {type(child).__name__}, not a module")
        out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _plain(value: Any) -> Any:
    """TensorRefs to lists of numbers, so metadata holds plain Python data only."""
    if isinstance(value, TensorRef):
        return value.tensor.float().tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_yolo_checkpoint(path: Path) -> YoloCheckpoint:
    """Weights and architecture of a YOLOv5 ``.pt`` checkpoint, read without its code base."""
    path = Path(path)
    ckpt = load_torch_zip(path)
    if not isinstance(ckpt, Mapping):
        raise ModelError(f"{path}: holds a {type(ckpt).__name__}, not a YOLOv5 checkpoint dict.")
    model = ckpt.get("ema") or ckpt.get("model")  # upstream prefers the EMA weights when present
    if not isinstance(model, Stub):
        raise ModelError(f"{path}: no 'model' in the checkpoint (keys: {sorted(map(str, ckpt))[:8]}).")
    yaml = model.attr("yaml")
    if not isinstance(yaml, Mapping) or not {"backbone", "head", "nc"} <= set(yaml):
        raise ModelError(f"{path}: the model ({model.path}) carries no architecture dict ('yaml').")
    try:
        state = module_state_dict(model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if not state:
        raise ModelError(f"{path}: the model holds no tensors.")
    nc = int(yaml["nc"])
    names = model.attr("names")
    if isinstance(names, Mapping):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        names = [str(i) for i in range(nc)]
    stride = _plain(model.attr("stride"))
    stride = tuple(float(s) for s in stride) if isinstance(stride, (list, tuple)) else ()
    return YoloCheckpoint(state, _plain(dict(yaml)), tuple(str(n) for n in names), stride)
