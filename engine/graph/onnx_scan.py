"""What an ONNX file declares, read without materialising it: inputs, outputs, weight names, metadata.

``onnx.load`` parses every node and copies every embedded weight; inspecting a user's model needs
none of that. This walks the protobuf wire format over a memory map, keeps the few small messages
inspection reads (input/output ValueInfos, the opset, metadata), only names the initializers and
only counts the nodes, so a file costs time linear in its size and little memory, and the size
and node caps are checked before anything big is decoded.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import onnx

from segengine.errors import ModelError

MAX_FILE_BYTES = 2 << 30  # protobuf's own limit for one message; external data files are not read
MAX_NODES = 1_000_000
MAX_FIELDS = 8_000_000  # wire fields walked in all: bounds the time a file of tiny fields takes
_TEXT_FORMATS = {".prototxt", ".textproto", ".txtpb", ".pbtxt", ".json", ".onnxjson", ".onnxtxt", ".onnxtext"}
# Field numbers from onnx.proto.
_MODEL = {"ir_version": 1, "opset_import": 8, "graph": 7, "metadata_props": 14}
_GRAPH = {"node": 1, "initializer": 5, "input": 11, "output": 12, "sparse_initializer": 15}
_TENSOR_NAME, _SPARSE_VALUES = 8, 1


class _Damaged(Exception):
    """The bytes are no valid protobuf (what onnx.load would call a DecodeError)."""


@dataclass(frozen=True)
class Scan:
    """``model`` holds the file's ir_version, opsets, metadata, graph inputs and outputs, and its
    initializers by name only (no nodes, no data); ``nodes`` counts the top graph's nodes."""

    model: onnx.ModelProto
    nodes: int


def scan_onnx(path: Path) -> Scan:
    """The declared interface of the ONNX file at ``path``; ModelError naming the file when it is
    missing, too big, damaged or beyond the caps."""
    try:
        if not path.is_file():
            raise ModelError(f"{path}: no such ONNX file")
        size = path.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ModelError(f"{path}: cannot read it ({exc})") from exc
    if size > MAX_FILE_BYTES:
        raise ModelError(f"{path}: {size / 2**30:.1f} GiB, above the {MAX_FILE_BYTES >> 30} GiB an ONNX file "
                         "can hold (larger models keep their weights as external data beside it)")
    if path.suffix.lower() in _TEXT_FORMATS:  # onnx.load parses these by extension; rare and small
        return _scan_text(path)
    try:
        with path.open("rb") as f:
            if size == 0:
                return _walk(path, b"")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _walk(path, buf)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read it ({exc})") from exc


def _scan_text(path: Path) -> Scan:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # each text parser raises its own errors
        raise ModelError(f"{path}: not a readable ONNX file ({exc})") from exc
    nodes = len(model.graph.node)
    _check_nodes(path, nodes)
    return Scan(model, nodes)


def _walk(path: Path, buf: bytes | mmap.mmap) -> Scan:
    model = onnx.ModelProto()
    nodes, budget = 0, [MAX_FIELDS]
    try:
        for field, start, end, value in _fields(buf, 0, len(buf), budget):
            if field == _MODEL["ir_version"] and end < 0:
                model.ir_version = value - 2**64 if value >= 2**63 else value  # int64, two's complement
            elif field == _MODEL["opset_import"] and end >= 0:
                opset = onnx.OperatorSetIdProto.FromString(bytes(buf[start:end]))
                _text(opset.domain, "an opset's domain")
                model.opset_import.append(opset)
            elif field == _MODEL["metadata_props"] and end >= 0:
                entry = onnx.StringStringEntryProto.FromString(bytes(buf[start:end]))
                _text(entry.key, "a metadata key")
                _text(entry.value, f"metadata {entry.key!r:.40}")
                model.metadata_props.append(entry)
            elif field == _MODEL["graph"] and end >= 0:
                nodes += _graph(buf, start, end, model.graph, budget)
                _check_nodes(path, nodes)
    except ModelError:
        raise
    except _Damaged as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({exc})") from None
    except Exception as exc:  # protobuf's DecodeError (and upb's RuntimeWarnings) on a damaged small message
        raise ModelError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    return Scan(model, nodes)


def _graph(buf: bytes | mmap.mmap, start: int, end: int, graph: onnx.GraphProto, budget: list[int]) -> int:
    nodes = 0
    for field, s, e, _ in _fields(buf, start, end, budget):
        if e < 0:
            continue  # a scalar field: nothing inspection reads
        if field == _GRAPH["node"]:
            nodes += 1
            if nodes > MAX_NODES:
                return nodes
        elif field in (_GRAPH["input"], _GRAPH["output"]):
            values = graph.input if field == _GRAPH["input"] else graph.output
            value = onnx.ValueInfoProto.FromString(bytes(buf[s:e]))
            _text(value.name, "an input's or output's name")
            values.append(value)
        elif field == _GRAPH["initializer"]:
            graph.initializer.add(name=_tensor_name(buf, s, e, budget))
        elif field == _GRAPH["sparse_initializer"]:  # its name is that of its values tensor
            for f, vs, ve, _ in _fields(buf, s, e, budget):
                if f == _SPARSE_VALUES and ve >= 0:
                    graph.initializer.add(name=_tensor_name(buf, vs, ve, budget))
    return nodes


def _tensor_name(buf: bytes | mmap.mmap, start: int, end: int, budget: list[int]) -> str:
    name = ""
    for field, s, e, _ in _fields(buf, start, end, budget):
        if field == _TENSOR_NAME and e >= 0:
            try:
                name = bytes(buf[s:e]).decode("utf-8")
            except UnicodeDecodeError:
                raise _Damaged("an initializer's name is not UTF-8") from None
    return name


def _text(value: object, what: str) -> None:
    """proto2 strings are not checked on parsing: protobuf hands back bytes where they are not UTF-8."""
    if not isinstance(value, str):
        raise _Damaged(f"{what} is not UTF-8 text")


def _check_nodes(path: Path, nodes: int) -> None:
    if nodes > MAX_NODES:
        raise ModelError(f"{path}: more than {MAX_NODES} nodes in its graph; that is no model this engine can "
                         "run (is the file what you meant?)")


def _fields(buf: bytes | mmap.mmap, pos: int, end: int, budget: list[int]):  # noqa: ANN202  # a generator
    """(field number, start, end, value) per field of the message in buf[pos:end]: for a
    length-delimited field its bytes' span and value 0, for a scalar end -1 and its value."""
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Damaged(f"more than {MAX_FIELDS} protobuf fields; not a model this engine inspects")
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Damaged(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, pos, -1, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _Damaged(f"a field of {length} bytes runs past its message's end at byte {pos}")
            yield field, pos, pos + length, 0
            pos += length
        elif wire in (1, 5):  # fixed64, fixed32
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Damaged(f"a fixed-size field runs past its message's end at byte {end}")
            yield field, pos, -1, 0
        else:  # 3/4: groups, which ONNX never uses; 6/7: no wire type
            raise _Damaged(f"wire type {wire} at byte {pos}")


def _varint(buf: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 70:
        if pos >= end:
            raise _Damaged(f"truncated at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & (2**64 - 1), pos
        shift += 7
    raise _Damaged(f"a varint longer than 10 bytes at byte {pos}")
