"""What users hand in with their own model: class lists and ONNX files, fuzzed.

Each reader either gives its result or raises the engine's own error (ConfigError, ModelError),
never a bare ValueError, a RecursionError or a huge allocation. The literal cases are what earlier
fuzz campaigns found, kept so CI catches them without hypothesis' luck.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segengine.errors import ConfigError, ModelError
from segengine.graph import class_list, onnx_scan
from segengine.graph.class_list import parse_names, read_class_list
from segengine.graph.custom import ModelSpec, inspect_onnx

# No subnormals: a library loaded earlier in a full test run (built with -ffast-math) turns on
# flush-to-zero for the process, where hypothesis refuses to generate them.
_FLOATS = st.floats(allow_subnormal=False)

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64



# --- class lists -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-inputs-") as tmp:
        yield Path(tmp)


def _read(scratch: Path, data: bytes, suffix: str) -> tuple[str, ...] | ConfigError:
    file = scratch / f"classes{suffix}"
    file.write_bytes(data)
    try:
        return read_class_list(file)
    except ConfigError as exc:
        return exc


@pytest.mark.parametrize(("data", "suffix", "expected"), [
    (b"[" * 100_000, ".json", "nested too deeply"),  # json's RecursionError escaped
    (b"[" + b"9" * 5000 + b"]", ".json", "cannot read"),  # int()'s digit limit: a ValueError
    (b'["\\ud800"]', ".json", "lone surrogate"),  # would fail later, writing UTF-8
    (b'["car", "bus\\nstop"]', ".json", "control character"),
    (b'["car", ""]', ".json", "not a non-empty name"),
    (b'{"0": "car"}', ".json", "expected a list"),
    (b"\xff\xfe", ".txt", "cannot read"),
    (b"\n \n", ".txt", "expected a list"),
    (b"car\x00\nbus", ".txt", "control character"),
])
def test_bad_class_lists_are_config_errors(scratch: Path, data: bytes, suffix: str, expected: str) -> None:
    result = _read(scratch, data, suffix)
    assert isinstance(result, ConfigError) and expected in str(result), result


def test_class_lists_read_names_and_refuse_what_is_no_file(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _read(scratch, "\ufeffperson\r\nbicycle\n".encode(), ".txt") == ("person", "bicycle")  # BOM dropped
    assert _read(scratch, b'["person", "car"]', ".JSON") == ("person", "car")
    with pytest.raises(ConfigError, match="cannot read"):
        read_class_list("classes\x00.txt")  # Path.stat's "embedded null byte" escaped
    monkeypatch.setattr(class_list, "MAX_FILE_BYTES", 8)
    assert "above the" in str(_read(scratch, b"person\nbicycle\n", ".txt"))


@given(st.binary(max_size=200), st.sampled_from([".txt", ".json", ""]))
def test_class_list_of_any_bytes(scratch: Path, data: bytes, suffix: str) -> None:
    result = _read(scratch, data, suffix)
    if not isinstance(result, ConfigError):  # names that a label, a JSON line and a UTF-8 file can hold
        assert result and all(n.strip() and not set(n) & set("\n\r\x00") for n in result)
        "\n".join(result).encode("utf-8")  # no lone surrogates


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _FLOATS | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=3), max_leaves=12)


@given(_JSON)
def test_class_list_of_any_json(scratch: Path, value: object) -> None:
    import json
    result = _read(scratch, json.dumps(value).encode(), ".json")
    if not isinstance(result, ConfigError):
        assert isinstance(value, list) and list(result) == value


@pytest.mark.parametrize(("text", "expected"), [
    ("-" * 100_000 + "1", "unusable"),  # the parser's stack: a MemoryError inside literal_eval
    ("[" * 300 + "]" * 300, "unusable"),  # too deeply nested for the parser
    ("x" * (2 << 20), "characters, above"),  # refused before literal_eval
    ("{0: 'a', 2: 'b'}", "unusable"),
    ("{True: 'a'}", "unusable"),  # True == 1: not keys 0..n-1
    ("['a', 3]", "entry 1"),
    ("['a', '']", "entry 1"),
    ("[]", "unusable"),
    ("__import__('os').system('true')", "unusable"),  # a call, never run
])
def test_bad_names_metadata_is_a_model_error(text: str, expected: str) -> None:
    with pytest.raises(ModelError, match=expected):
        parse_names(Path("m.onnx"), text)


@given(st.text(max_size=80))
def test_names_metadata_of_any_text(text: str) -> None:
    try:
        names = parse_names(Path("m.onnx"), text)
    except ModelError as exc:
        assert "m.onnx" in str(exc)
    else:
        assert names and all(isinstance(n, str) for n in names)


# --- ONNX files ------------------------------------------------------------------------------------

def _model(inputs: list[tuple[str, int, list[int | str]]], outputs: list[tuple[str, int, list[int | str]]],
           names: str | None = None, nodes: int = 1) -> onnx.ModelProto:
    """A graph whose ValueInfos say what the test wants; its nodes are never run, only inspected."""
    weight = oh.make_tensor("w", FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12).tolist())
    graph = oh.make_graph([oh.make_node("Identity", ["w"], [f"n{k}"]) for k in range(nodes)], "fuzz",
                          [oh.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [oh.make_tensor_value_info(n, t, s) for n, t, s in outputs], [weight])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    if names is not None:
        oh.set_model_props(model, {"names": names})
    return model


X = ("x", FLOAT, [1, 3, 64, 64])
SEMANTIC = _model([X, ("w", FLOAT, [4, 3, 1, 1])], [("logits", FLOAT, [1, 4, 16, 16])])
CLASS_IDS = _model([("x", FLOAT, [1, 3, "h", "w"])], [("ids", INT64, [1, "h", "w"])], names="['a', 'b']")
YOLO_V5 = _model([X], [("pred", FLOAT, [1, 252, 39]), ("protos", FLOAT, [1, 32, 16, 16])])
YOLO_V8 = _model([X], [("pred", FLOAT, [1, 38, "n"]), ("protos", FLOAT, [1, 32, 16, 16])])
MODELS = {"semantic": SEMANTIC, "class-ids": CLASS_IDS, "yolo-v5": YOLO_V5, "yolo-v8": YOLO_V8}


def _inspect(scratch: Path, data: bytes) -> ModelSpec | ModelError | ConfigError:
    file = scratch / "model.onnx"
    file.write_bytes(data)
    try:
        return inspect_onnx(file)
    except (ModelError, ConfigError) as exc:
        assert "model.onnx" in str(exc), exc  # every error names the file
        return exc


def test_the_tiny_models_are_read_as_what_they_are(scratch: Path) -> None:
    kinds = {name: _inspect(scratch, m.SerializeToString()) for name, m in MODELS.items()}
    assert {n: getattr(s, "kind", s) for n, s in kinds.items()} == {
        "semantic": "semantic", "class-ids": "semantic", "yolo-v5": "yolo-v5", "yolo-v8": "yolo-v8"}
    assert kinds["class-ids"].classes == ("a", "b")  # type: ignore[union-attr]
    assert kinds["yolo-v8"].num_classes == 2  # type: ignore[union-attr]  # 38 - 4 box - 32 masks


@pytest.mark.parametrize(("model", "expected"), [
    (_model([X], [("y", 999, [1, 4, 16, 16])]), "type999"),  # DataType.Name's ValueError escaped
    (_model([X], [("y", 0, [1, 4, 16, 16])]), "undefined"),
    (_model([("x", 999, [1, 3, 8, 8])], [("y", FLOAT, [1, 4, 16, 16])]), "not an image batch"),
    (_model([("x", FLOAT, [1, 3, -8, "w"])], [("y", 999, [1, 3, -1, 4])]), "neither class logits"),
    (_model([X], []), "0 outputs"),
    (_model([], [("y", FLOAT, [1, 4, 16, 16])]), "0 inputs"),
    (_model([X], [("y", FLOAT, [1, 2**40, 16, 16])]), "1099511627776 classes"),  # range(nc) names: hung
    (_model([X], [("p", FLOAT, [1, 2**40, "n"]), ("q", FLOAT, [1, 32, 16, 16])]), "classes, above"),
    (_model([("x", FLOAT, [1, 3, 2**31, 2**31])], [("y", FLOAT, [1, 4, 16, 16])]), "larger than 16384"),
    (_model([X], [("y", FLOAT, [1, 4, 16, 16])], names="[" * 300), "unusable"),
    (_model([X], [("y", FLOAT, [1, 4, 16, 16])], names="x" * (2 << 20)), "characters, above"),
    (_model([X], [("y", FLOAT, [1, 4, 16, 16])], names="{0: 'a', 1: 'b'}"), "2 classes but the outputs hold 4"),
    (_model([X], [(f"o{k}", FLOAT, [1]) for k in range(500)]), r"500 outputs .*\.\.\. \(500 in all\)"),
])
def test_odd_models_are_model_errors(scratch: Path, model: onnx.ModelProto, expected: str) -> None:
    result = _inspect(scratch, model.SerializeToString())
    assert isinstance(result, (ModelError, ConfigError)), result
    with pytest.raises(type(result), match=expected):
        raise result
    assert len(str(result)) < 2000  # a message, not a dump of the file


@pytest.mark.parametrize(("data", "expected"), [
    (b"not a graph", "not a readable ONNX file"),
    # a graph whose input's name is not UTF-8: protobuf handed back bytes, and the message's format raised
    (b":\x0bZ\t\n\x01\x80\x12\x04\n\x02\x08\x01", "name is not UTF-8"),
    (b"r\t\n\x05names\x12\x00r\x05\n\x01\xff\x12\x00", "metadata key is not UTF-8"),
    (b"\x3a\xff\xff\xff\xff\x0f", "runs past"),  # a graph field claiming 4 GiB
    (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (b"\x3a\x02\x5a\x80", "not a readable"),  # an input ValueInfo cut short
    (b"", "0 inputs"),
])
def test_damaged_files_are_model_errors(scratch: Path, data: bytes, expected: str) -> None:
    result = _inspect(scratch, data)
    assert isinstance(result, ModelError) and expected in str(result), result


def test_size_and_node_caps_are_checked_before_parsing(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_scan, "MAX_NODES", 10)
    assert "more than 10 nodes" in str(_inspect(scratch, _model([X], [("y", FLOAT, [1, 4, 8, 8])],
                                                                 nodes=11).SerializeToString()))
    monkeypatch.setattr(onnx_scan, "MAX_FILE_BYTES", 100)
    assert "GiB, above" in str(_inspect(scratch, SEMANTIC.SerializeToString()))
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("inspection must not load the whole model"))
    monkeypatch.setattr(onnx_scan, "MAX_FILE_BYTES", 2 << 30)
    assert isinstance(_inspect(scratch, SEMANTIC.SerializeToString()), ModelSpec)
    with pytest.raises(ModelError, match="cannot read it|no such ONNX file"):
        inspect_onnx("model\x00.onnx")


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """One of the tiny models with a few bytes changed, cut, or inserted."""
    data = bytearray(draw(st.sampled_from(list(MODELS.values()))).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "insert", "cut"]))
        if action == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


@given(_mutated())
def test_mutated_onnx_files(scratch: Path, data: bytes) -> None:
    _inspect(scratch, data)


_DIMS = st.lists(st.one_of(st.integers(-3, 2**63 - 1), st.sampled_from([1, 3, 4, 32, 64, 118]),
                           st.text("hwn", min_size=1, max_size=2)), max_size=5)
_VALUES = st.lists(st.tuples(st.text("abcxyz", min_size=1, max_size=3), st.sampled_from([0, 1, 1, 1, 6, 7, 999]),
                             _DIMS), max_size=3, unique_by=lambda v: v[0])


@given(_VALUES, _VALUES, st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["['a', 'b']", "{0: 'a'}"])))
def test_any_declared_interface(scratch: Path, inputs: list, outputs: list, names: str | None) -> None:
    _inspect(scratch, _model(inputs, outputs, names).SerializeToString())
