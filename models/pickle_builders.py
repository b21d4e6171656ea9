"""The only callables a pickle read by :class:`~models.safe_pickle.SafeUnpickler` can reach.

Each is a :class:`Builder`: not a type (so NEWOBJ cannot reach ``bytes.__new__`` and friends), with
slots and a refusing ``__setstate__`` (so BUILD cannot rewrite its defaults or attributes), that
accepts only the argument shapes Python's pickler writes, with bounded sizes: ``bytes(2**40)`` or
``str(a_huge_shared_list)`` are refused instead of allocating or walking without end.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from segengine.models.pickle_guards import short_repr

MAX_BYTES_CALL = 1 << 20  # bytes(n) / bytearray-like calls: no checkpoint needs more
MAX_TEXT_CALL = 1 << 16  # int("..."), float("..."): numbers, not novels
MAX_DIMS = 64  # torch's own limit on a tensor's dimensions


class Refused(Exception):
    """Raised inside unpickling; turned into a ModelError naming the file."""


class Builder:
    """A named callable for REDUCE; inert under BUILD."""

    __slots__ = ("name", "fn")
    bounded_repr = True

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise Refused(f"a call of {self.name} with keyword arguments")
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise Refused(f"BUILD on {self.name}")

    def __repr__(self) -> str:
        return f"<builder {self.name}>"


class SafeOrderedDict(OrderedDict):  # type: ignore[type-arg]
    """An OrderedDict whose pickled instance state (``_metadata`` of a state_dict) is kept aside.

    A plain OrderedDict has an instance ``__dict__``: BUILD would set attributes on it, and one named
    ``get`` or ``items`` would shadow the method our readers call.
    """

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickled_state"] = state


# --- tensors: rebuilt from the file's storages by our own code, never torch's rebuild hooks -----


class StorageType:
    """``torch.FloatStorage`` and friends, as named in a persistent id; not callable."""

    __slots__ = ("name", "dtype")
    bounded_repr = True

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def __setstate__(self, state: Any) -> None:
        raise Refused("BUILD on a storage type")

    def __repr__(self) -> str:
        return f"<StorageType {self.name}>"


class _Storage:
    __slots__ = ("flat",)
    bounded_repr = True

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat  # 1-D, the storage's whole content

    def __setstate__(self, state: Any) -> None:
        raise Refused("BUILD on a storage")

    def __repr__(self) -> str:
        return f"<storage of {self.flat.numel()} {self.flat.dtype}>"


class TensorRef:
    """A rebuilt tensor, wrapped so that a pickled BUILD cannot reach ``Tensor.__setstate__``."""

    __slots__ = ("tensor", "is_parameter")
    bounded_repr = True

    def __init__(self, tensor: torch.Tensor, is_parameter: bool = False) -> None:
        self.tensor = tensor
        self.is_parameter = is_parameter

    def __setstate__(self, state: Any) -> None:
        raise Refused("BUILD on a tensor")

    def __repr__(self) -> str:
        return f"<TensorRef {tuple(self.tensor.shape)} {self.tensor.dtype}>"


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> TensorRef:
    if not isinstance(storage, _Storage):
        raise Refused(f"a tensor built on {type(storage).__name__}, not on a storage of the file")
    layout = f"(offset {short_repr(offset)}, size {short_repr(size)}, stride {short_repr(stride)})"
    if type(size) not in (tuple, list) or type(stride) not in (tuple, list) or len(size) != len(stride) \
            or len(size) > MAX_DIMS:
        raise Refused(f"a tensor with a bad layout {layout}")
    if not all(type(v) is int and 0 <= v < 1 << 62 for v in (offset, *size, *stride)):
        raise Refused(f"a tensor with a bad layout {layout}")
    if hooks or metadata:
        raise Refused("a tensor with backward hooks or metadata")
    numel = storage.flat.numel()
    count = 1
    for n in size:
        count *= n
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise Refused(f"a tensor reaching element {last} of a storage of {numel}")
        if count > numel:  # stride-0 views: a tiny storage posing as a huge tensor
            raise Refused(f"a tensor of {count} elements viewing a storage of {numel} {layout}")
    elif offset > numel:
        raise Refused(f"an empty tensor at offset {offset} of a storage of {numel}")
    return TensorRef(storage.flat.as_strided(tuple(size), tuple(stride), offset))


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef) or hooks or rest:
        raise Refused("a parameter that is not a plain tensor")
    return TensorRef(data.tensor, is_parameter=True)



# --- plain values ------------------------------------------------------------------------------

_ATOM_TYPES = (str, int, float, bool, type(None))


def _refuse(name: str, args: tuple[Any, ...]) -> Refused:
    return Refused(f"a call of {name}{short_repr(args)}")


def _no_args(name: str, make: Callable[[], Any]) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if args:
            raise _refuse(name, args)
        return make()
    return build


def _from_sequence(name: str, make: Callable[[Any], Any]) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if not args:
            return make(())
        if len(args) == 1 and type(args[0]) in (list, tuple, set, frozenset):
            return make(args[0])
        raise _refuse(name, args)
    return build


def _number(name: str, make: Callable[[Any], Any]) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if not args:
            return make(0)
        value = args[0]
        if len(args) == 1 and type(value) in (int, float, bool, str) and (
                not isinstance(value, str) or len(value) <= MAX_TEXT_CALL):
            return make(value)
        raise _refuse(name, args)
    return build


def _complex(*args: Any) -> complex:
    if len(args) <= 2 and all(type(a) in (int, float, bool) for a in args):
        return complex(*args)
    raise _refuse("complex", args)


def _str(*args: Any) -> str:
    if not args:
        return ""
    if len(args) == 1 and type(args[0]) in _ATOM_TYPES and (
            type(args[0]) is not int or args[0].bit_length() <= 4096):
        return str(args[0])
    raise _refuse("str", args)


def _bytes(*args: Any) -> bytes:
    if not args:
        return b""
    if len(args) == 1:
        value = args[0]
        if type(value) is int and 0 <= value <= MAX_BYTES_CALL:
            return bytes(value)
        if type(value) in (bytes, bytearray, list, tuple) and len(value) <= MAX_BYTES_CALL:
            return bytes(value)
    raise _refuse("bytes", args)


def _bool(*args: Any) -> bool:
    if len(args) <= 1 and all(type(a) in _ATOM_TYPES for a in args):
        return bool(*args)
    raise _refuse("bool", args)


def _slice(*args: Any) -> slice:
    if 1 <= len(args) <= 3:
        return slice(*args)
    raise _refuse("slice", args)


def _tuple(*args: Any) -> tuple[()]:
    # a tuple made by a call would escape the pre-scan's bounds on tuple depth and size
    if args:
        raise _refuse("tuple", args)
    return ()


_BUILDERS: dict[str, Callable[..., Any]] = {
    "set": _from_sequence("set", set), "frozenset": _from_sequence("frozenset", frozenset),
    "list": _from_sequence("list", list), "tuple": _tuple, "dict": _no_args("dict", dict),
    "int": _number("int", int), "float": _number("float", float), "complex": _complex, "bool": _bool,
    "str": _str, "bytes": _bytes, "slice": _slice,
}
SAFE_GLOBALS: dict[tuple[str, str], Builder] = {
    ("collections", "OrderedDict"): Builder("collections.OrderedDict", _no_args("OrderedDict", SafeOrderedDict)),
    **{(mod, name): Builder(f"builtins.{name}", fn) for mod in ("builtins", "__builtin__")
       for name, fn in _BUILDERS.items()},
}
