"""Bounds on a pickle, checked by reading its opcodes before any unpickler runs.

CPython's C unpickler (and torch's ``weights_only`` one) trusts the stream it reads:

* ``LONG_BINPUT 2**31`` makes it grow its memo array to the index (~7 GB);
* ``BINBYTES8`` / ``BINUNICODE8`` / ``BYTEARRAY8`` allocate the declared length before reading;
* a million ``TUPLE1`` build a tuple chain whose hash recurses in C without a guard (a segfault),
  and a DAG of shared tuples (``t = (t, t)`` forty times) hashes in exponential time;
* dict keys with one full hash (ints ``k * (2**61 - 1)``) make inserts quadratic;
* one big argument tuple or list, memoized and passed to REDUCE again and again, makes every call copy it.

:func:`scan` walks the opcodes with :func:`pickletools.genops` (which refuses a declared length beyond
the data without allocating it) and simulates the stack just enough to bound all of that: memo keys,
tuple depth and size, per-container hash collisions and a total work budget. It is linear in the
pickle's size. Anything out of bounds is a :class:`~engine.errors.ModelError` naming the file.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from segengine.errors import ModelError

MAX_PICKLE_BYTES = 64 << 20  # a YOLOv5 data.pkl is ~100 KB
MAX_TUPLE_DEPTH = 256  # hash() of a tuple recurses this deep in C, unguarded
MAX_TUPLE_NODES = 1 << 20  # elements hash() of one tuple visits, shared ones counted each time
# Steps: opcodes plus elements hashed, copied or parsed by the calls the pickle makes. A real checkpoint
# takes about one per byte (yolov5s-seg: 101555 for 91984 bytes); amplification takes the square.
MAX_WORK_BASE = 1 << 22
MAX_WORK_PER_BYTE = 4
MAX_COLLISIONS = 16  # distinct keys with one full hash in one container
MAX_CHOSEN_HASHES = 4096  # keys of one container whose hash the file may choose but the scan cannot compute
MEMO_SLACK = 1024  # picklers number memo entries 0, 1, 2...: allow a little past that
_P = (1 << 61) - 1  # bucket by hash mod P: ints below P hash to themselves, so the buckets cannot collide
# Calls whose result hashes to a value the file chooses (frozenset({k}), complex(a, b), torch.Size(...)).
VALUE_MAKERS = frozenset(f"{m}.{n}" for m in ("builtins", "__builtin__") for n in (
    "int", "float", "complex", "bool", "str", "bytes", "frozenset", "tuple", "slice", "range")) | {
    "torch.Size", "torch.device"}
_UNK = "chosen"  # hv of a value whose hash the file chooses but the scan does not know

_NA = object()  # "not a known constant"
_MARK = object()


@dataclass(frozen=True)
class GlobalRef:
    """A GLOBAL the pickle names (for persistent ids and the calls the scan must know)."""

    module: str
    name: str

    @property
    def path(self) -> str:
        return f"{'builtins' if self.module == '__builtin__' else self.module}.{self.name}"


@dataclass
class Scan:
    end: int  # offset just past STOP
    persistent_ids: list[Any] = field(default_factory=list)  # constants, or None where not constant


class _HashOf:
    """Stands for an item whose hash we know, so ``hash(tuple)`` of them is CPython's own value."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return self.value


class _V:
    """What the scan knows of one stack value."""

    __slots__ = ("kind", "h", "s", "w", "hv", "const", "items", "static", "buckets")

    def __init__(self, kind: str, *, h: int = 0, s: int = 1, w: int = 1, hv: int | str | None = None,
                 const: Any = _NA, items: list[_V] | None = None) -> None:
        self.kind = kind  # "atom", "tuple", "container" (list/dict/set) or "opaque"
        self.h = h  # tuple nesting depth hash() recurses through
        self.s = s  # nodes hash() visits
        self.w = w  # work to copy/iterate/parse it one level deep
        self.hv = hv  # its hash where the file controls it (ints, floats, tuples of them), or _UNK
        self.const = const  # small constants: persistent ids, the callables
        self.items = items  # a tuple's mutable items, whose weight may still grow: the live cost of a call
        self.static = 0  # a tuple's weight from its immutable items
        self.buckets: dict[Any, list[_V]] | None = None  # hv mod P -> distinct keys seen, per container


def _atom(value: Any) -> _V:
    if isinstance(value, (str, bytes, bytearray)):
        return _V("atom", w=1 + len(value) // 16, const=value if len(value) <= 256 else _NA)
    hv: int | None = None
    if isinstance(value, (bool, int, float)) or value is None:
        hv = None if value != value else hash(value)  # a NaN hashes by identity
    small = not isinstance(value, int) or value.bit_length() <= 256
    return _V("atom", w=1 + (value.bit_length() // 512 if isinstance(value, int) else 0), hv=hv,
              const=value if small else _NA)


class _Scanner:
    def __init__(self, source: Path | str, tuple_makers: frozenset[str], max_work: int) -> None:
        self.source = source
        self.max_work = max_work
        self.tuple_makers = tuple_makers
        self.stack: list[Any] = []
        self.memo: dict[int, _V] = {}
        self.work = 0
        self.pids: list[Any] = []

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.source}: refused to load: the pickle {what}. "
                          "The file is damaged or crafted; fetch the weights again from their source.")

    def charge(self, n: int) -> None:
        self.work += n
        if self.work > self.max_work:
            raise self.fail(f"needs more than {self.max_work} steps to load (amplified copies or hashing)")

    def pop(self) -> _V:
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("pops an empty stack")
        return self.stack.pop()

    def top(self) -> _V:
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("works on an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list[_V]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise self.fail("has no MARK where one is needed")

    def note(self, target: _V, keys: Iterable[_V]) -> None:
        """Count distinct keys per full hash in ``target``; charge hashing them."""
        for key in keys:
            self.charge(key.s)
            if key.hv is None:
                continue  # hashed by identity or with Python's random seed: the file cannot collide them
            if target.buckets is None:
                target.buckets = {}
            bucket = _UNK if key.hv == _UNK else key.hv % _P
            seen = target.buckets.setdefault(bucket, [])
            if any(c is key or (key.const is not _NA and type(c.const) is type(key.const) and c.const == key.const)
                   for c in (seen if bucket != _UNK else ())):
                continue
            seen.append(key)
            if bucket == _UNK and len(seen) > MAX_CHOSEN_HASHES:
                raise self.fail(f"holds more than {MAX_CHOSEN_HASHES} keys whose hashes it chooses in one container")
            if bucket != _UNK and len(seen) > MAX_COLLISIONS:
                raise self.fail(f"holds more than {MAX_COLLISIONS} distinct keys with one hash (hash flooding)")

    def make_tuple(self, items: list[_V]) -> _V:
        self.charge(1 + len(items))
        h = 1 + max((i.h for i in items), default=0)
        s = 1 + sum(i.s for i in items)
        if h > MAX_TUPLE_DEPTH or s > MAX_TUPLE_NODES:
            raise self.fail(f"builds a tuple nested {h} deep / of {s} elements "
                            f"(limits {MAX_TUPLE_DEPTH} / {MAX_TUPLE_NODES})")
        hv: int | str | None = None
        if all(type(i.hv) is int for i in items):
            hv = hash(tuple(_HashOf(i.hv) for i in items))  # type: ignore[arg-type]
        elif any(i.hv is not None for i in items):
            hv = _UNK
        const = tuple(i.const for i in items) if s <= 16 and all(i.const is not _NA for i in items) else _NA
        live = [i for i in items if i.kind not in ("atom", "tuple")]
        t = _V("tuple", h=h, s=s, w=1 + sum(self.shallow(i) for i in items), hv=hv, const=const, items=live)
        t.static = sum(i.w for i in items if i.kind in ("atom", "tuple"))
        self.note(t, items)
        return t

    @staticmethod
    def shallow(item: _V) -> int:
        return item.w if item.kind in ("atom", "tuple") else 1

    def container(self, items: list[_V] = (), keys: list[_V] = ()) -> _V:  # type: ignore[assignment]
        c = _V("container", w=1 + sum(self.shallow(i) for i in items))
        self.charge(c.w)
        self.note(c, keys)
        return c

    def add(self, target: _V, items: list[_V], keys: list[_V]) -> None:
        # a list/dict/set, or a real or stub object whose append/extend/__setitem__ runs
        self.charge(1 + len(items))
        if target.kind in ("atom", "tuple"):
            return  # the unpickler fails on it
        target.w += sum(self.shallow(i) for i in items)
        self.note(target, keys)

    def call(self, func: _V, args: _V) -> _V:
        """REDUCE / NEWOBJ: the callee may copy, iterate or hash every argument one level deep."""
        cost = 1 + (args.static + sum(i.w for i in args.items) if args.items is not None else args.w)
        self.charge(cost)
        path = func.const.path if isinstance(func.const, GlobalRef) else ""
        if path in self.tuple_makers:
            return _V("tuple", h=2, s=min(cost, MAX_TUPLE_NODES), w=cost, hv=_UNK)
        return _V("opaque", w=cost, hv=_UNK if path in VALUE_MAKERS else None)

    def step(self, name: str, arg: Any) -> None:  # noqa: C901 - one branch per opcode family
        st = self.stack
        self.charge(1)
        if name in _ATOMS:
            st.append(_atom(arg))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            st.append(_atom({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name]))
        elif name in ("BYTEARRAY8", "NEXT_BUFFER"):
            st.append(_V("container", w=1 + (len(arg) // 16 if arg else 0)))
        elif name == "READONLY_BUFFER":
            self.top()
        elif name == "EMPTY_TUPLE":
            st.append(self.make_tuple([]))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            st.append(self.make_tuple(items))
        elif name == "TUPLE":
            st.append(self.make_tuple(self.pop_mark()))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            st.append(self.container())
        elif name == "LIST":
            items = self.pop_mark()
            st.append(self.container(items, items))
        elif name == "DICT":
            items = self.pop_mark()
            if len(items) % 2:
                raise self.fail("has an odd number of items for DICT")
            st.append(self.container(items, items[::2]))
        elif name == "FROZENSET":
            items = self.pop_mark()
            self.note(self.container(), items)
            st.append(_V("opaque", w=1 + len(items), hv=_UNK))  # hashes its items once, then caches its own hash
        elif name == "APPEND":
            item = self.pop()
            self.add(self.top(), [item], [item])
        elif name in ("APPENDS", "ADDITEMS"):
            items = self.pop_mark()
            self.add(self.top(), items, items)
        elif name == "SETITEM":
            value, key = self.pop(), self.pop()
            self.add(self.top(), [key, value], [key])
        elif name == "SETITEMS":
            items = self.pop_mark()
            if len(items) % 2:
                raise self.fail("has an odd number of items for SETITEMS")
            self.add(self.top(), items, items[::2])
        elif name == "POP":
            if not st:
                raise self.fail("pops an empty stack")
            st.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            st.append(self.top())
        elif name == "MARK":
            st.append(_MARK)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise self.fail(f"reads memo entry {arg}, which it never wrote")
            st.append(self.memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            key = len(self.memo) if name == "MEMOIZE" else arg
            if type(key) is not int or not 0 <= key <= len(self.memo) + MEMO_SLACK:
                raise self.fail(f"writes memo entry {key} with only {len(self.memo)} entries "
                                "(a memo that big is a crafted allocation)")
            self.memo[key] = self.top()
        elif name == "GLOBAL":
            module, _, gname = str(arg).partition(" ")
            st.append(_V("opaque", const=GlobalRef(module, gname)))
        elif name == "STACK_GLOBAL":
            gname, module = self.pop(), self.pop()
            ref = GlobalRef(module.const, gname.const) if isinstance(module.const, str) and \
                isinstance(gname.const, str) else _NA
            st.append(_V("opaque", const=ref))
        elif name == "REDUCE":
            args, func = self.pop(), self.pop()
            st.append(self.call(func, args))
        elif name == "NEWOBJ":
            args, cls = self.pop(), self.pop()
            st.append(self.call(cls, args))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = self.pop(), self.pop(), self.pop()
            self.charge(kwargs.w)
            st.append(self.call(cls, args))
        elif name in ("INST", "OBJ"):
            items = self.pop_mark()
            if name == "OBJ" and not items:
                raise self.fail("has OBJ without a class")
            args = self.make_tuple(items[1:] if name == "OBJ" else items)
            module, _, gname = str(arg).partition(" ")
            st.append(self.call(items[0] if name == "OBJ" else _V("opaque", const=GlobalRef(module, gname)), args))
        elif name == "BUILD":
            state = self.pop()
            self.top()
            self.charge(state.w)
        elif name in ("PERSID", "BINPERSID"):
            pid = _atom(arg) if name == "PERSID" else self.pop()
            self.charge(pid.w)
            self.pids.append(pid.const if pid.const is not _NA else None)
            st.append(_V("opaque"))
        elif name in ("EXT1", "EXT2", "EXT4"):
            st.append(_V("opaque"))
        elif name in ("PROTO", "FRAME", "STOP"):
            pass
        else:
            raise self.fail(f"uses opcode {name}, which no checkpoint needs")


_ATOMS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
})


def scan(data: bytes, *, source: Path | str, start: int = 0,
         tuple_makers: frozenset[str] = frozenset()) -> Scan:
    """Check the pickle at ``data[start:]`` against the bounds above; where it ends and its persistent ids.

    ``tuple_makers`` names globals whose calls return tuples (``torch.Size`` for torch's own loader).
    """
    if len(data) - start > MAX_PICKLE_BYTES:
        raise ModelError(f"{source}: refused to load: a pickle of {len(data) - start} bytes "
                         f"(more than {MAX_PICKLE_BYTES}); no checkpoint's pickle is that big.")
    stream = io.BytesIO(data)
    stream.seek(start)
    scanner = _Scanner(source, tuple_makers, MAX_WORK_BASE + MAX_WORK_PER_BYTE * (len(data) - start))
    try:
        for op, arg, _pos in pickletools.genops(stream):
            if op.name == "FRAME" and arg > len(data) - stream.tell():
                raise scanner.fail(f"declares a frame of {arg} bytes with {len(data) - stream.tell()} left")
            scanner.step(op.name, arg)
            if op.name == "STOP":
                return Scan(stream.tell(), scanner.pids)
    except ModelError:
        raise
    except (ValueError, OverflowError, UnicodeDecodeError, TypeError, MemoryError) as exc:
        # genops: unknown opcode, a length beyond the data, a bad number or string, no STOP
        raise ModelError(f"{source}: the pickle inside is damaged ({type(exc).__name__}: "
                         f"{short_text(str(exc))})") from None
    raise ModelError(f"{source}: the pickle inside is damaged (it ends before STOP).")


# --- bounded descriptions, for error messages about values a pickle made ------------------------


def short_text(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def short_repr(value: Any, limit: int = 80, _depth: int = 0) -> str:
    """``repr`` that stays short and fast on huge, deep, shared or self-containing values."""
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:limit])
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(value) if value.bit_length() <= 128 else f"<int of {value.bit_length()} bits>"
    elif isinstance(value, (list, tuple, set, frozenset, Mapping)):
        name = type(value).__name__
        if _depth >= 2:
            return f"<{name} of {len(value)}>"
        shown = list(islice(value.items() if isinstance(value, Mapping) else value, 4))
        parts = [short_repr(v, limit, _depth + 1) if not isinstance(value, Mapping) else
                 f"{short_repr(v[0], limit, _depth + 1)}: {short_repr(v[1], limit, _depth + 1)}" for v in shown]
        more = ", ..." if len(value) > len(shown) else ""
        text = f"{name}[{', '.join(parts)}{more}]"
    else:
        # our own stubs and records have short reprs; anything else could be huge or run code
        text = repr(value) if getattr(type(value), "bounded_repr", False) else f"<{type(value).__name__}>"
    return short_text(text, limit)
