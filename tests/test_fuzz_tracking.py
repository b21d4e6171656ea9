"""Property tests of ``segengine track``'s readers: whatever a file holds, they yield frames within
the bounds of segengine.tracking.limits or raise ConfigError, nothing else; and what the writers
write, they read back the same.

The memory property runs in a child process under RLIMIT_AS, so a size that slipped past the
bounds fails there, as a MemoryError, instead of taking this machine's memory.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segengine.errors import ConfigError
from segengine.rle import decode_mask, encode_mask
from segengine.tracking import limits
from segengine.tracking.base import Detections, TrackedObjects
from segengine.tracking.formats import Damage, FrameDets, detect_format, read_frames
from segengine.tracking.writers import JsonlWriter, MotsWriter, MotWriter

# No subnormals: a library loaded earlier in a full test run (built with -ffast-math) turns on
# flush-to-zero for the process, where hypothesis refuses to generate them.
_FLOATS = st.floats(allow_subnormal=False)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

FORMATS = ("mot", "mots", "jsonl")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-tracking")


def _read(path: Path, fmt: str, damage: Damage | None = None) -> list[FrameDets]:
    """Every frame, each checked against the bounds; ConfigError passes through."""
    frames = list(read_frames(path, fmt, 25.0, damage=damage))
    for prev, f in zip(frames, frames[1:]):
        if fmt != "jsonl":  # gaps are filled with empty frames: one step each
            assert f.frame == prev.frame + 1
    for f in frames:
        n = len(f.dets)
        assert 0 <= f.frame <= limits.MAX_FRAME and math.isfinite(f.t) and n <= limits.MAX_DETECTIONS
        assert np.isfinite(f.dets.boxes).all() and np.isfinite(f.dets.scores).all()
        assert (np.abs(f.dets.boxes) <= 2 * limits.MAX_COORDINATE).all()
        assert ((f.dets.class_ids >= 0) & (f.dets.class_ids <= limits.MAX_CLASS_ID)).all()
        if f.dets.masks is not None:
            assert f.grid is not None and f.dets.masks.shape == (n, *f.grid.shape)
            h, w = f.grid.frame_size
            assert h <= limits.MAX_MASK_SIDE and w <= limits.MAX_MASK_SIDE and h * w <= limits.MAX_MASK_PIXELS
        for rle in f.rles or ():  # every mask accepted is exactly its runs (none left to chance)
            runs, (h, w) = _runs(rle["counts"]), rle["size"]
            assert min(runs) >= 0 and sum(runs) == h * w, (rle, runs)
            assert decode_mask(rle).sum() == sum(runs[1::2])
    return frames


def _runs(counts: str) -> list[int]:
    """pycocotools' rleFrString in plain Python ints: the reference the reader's check is held to."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x -= 1 << 5 * k
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def _frames_or_config_error(path: Path, fmt: str) -> None:
    for damage in (None, Damage()):
        try:
            _read(path, fmt, damage)
        except ConfigError as exc:
            assert str(exc).startswith(f"{path}"), exc  # every message names the file


# --- anything in, frames or ConfigError out --------------------------------------------------------

@given(data=st.binary(max_size=3000))
def test_any_bytes(folder: Path, data: bytes) -> None:
    path = folder / "bytes.dat"
    path.write_bytes(data)
    for fmt in FORMATS:
        _frames_or_config_error(path, fmt)
    try:
        assert detect_format(path) in FORMATS
    except ConfigError:
        pass


# tokens a MOT/MOTS line is made of, good and hostile
_TOKENS = st.one_of(
    st.sampled_from(["1", "2", "-1", "0", "10", "0.5", "1e3", "48", "64", "1000", "10000000", "10000001",
                     "250001", "inf", "-inf", "nan", "1e400", "-0", "1_0", "²", "١", "", " ", "0o", "PP3",
                     "Z3:V100000000000000000f]2", "52", "@", "`", "o" * 12 + "0", "16384", "16385", "99999999999",
                     "1.5", ".5", "5.", "+3", "0x10", "\x00", "\u00a0", "\ufeff1"]),
    st.integers(-10**6, 10**8).map(str),
    _FLOATS.map(repr),
    st.text(max_size=8))


@st.composite
def _text_file(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        sep = draw(st.sampled_from([",", " ", ", ", "\t"]))
        lines.append(sep.join(draw(st.lists(_TOKENS, min_size=0, max_size=9))))
    end = draw(st.sampled_from(["\n", "", "\r\n"]))
    return "\n".join(lines) + end


@given(text=_text_file())
def test_mot_and_mots_like_lines(folder: Path, text: str) -> None:
    path = folder / "lines.txt"
    path.write_text(text, encoding="utf-8")
    for fmt in ("mot", "mots"):
        _frames_or_config_error(path, fmt)


_RLE_TEXT = st.one_of(st.text(alphabet=[chr(c) for c in range(48, 112)], min_size=1, max_size=12),
                      st.sampled_from(["PP3", "0`7`h2", "Z3:V100000000000000000f]2", "52", "@", "`", "0o"]))


@given(rows=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([1, 2, 10, 10**7]),
                               st.sampled_from([(48, 64), (1, 1), (3, 4), (16385, 1), (0, 5)]), _RLE_TEXT),
                     min_size=1, max_size=6))
def test_mots_fields(folder: Path, rows: list) -> None:
    """Lines of the right shape, sizes and run strings drawn to be often wrong: what is read is exact."""
    path = folder / "fields.txt"
    path.write_text("".join(f"{f} -1 {c} 0.5 {h} {w} {counts}\n" for f, c, (h, w), counts in rows))
    _frames_or_config_error(path, "mots")


_EDGES = st.sampled_from([2**63, -2**63 - 1, 10**30, 10**400, 1e308, -0.0, 5e-324, True, False, "", "1", [], {},
                          [1, 2, 3, 4], [48, 64], "PP3", "52", {"size": [48, 64], "counts": "PP3"}])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _FLOATS | st.text(max_size=6) | _EDGES,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=4), max_leaves=12)
_KEYS = ["frame", "size", "pts", "stream", "layers", "kind", "items", "box", "score", "class_id", "mask", "counts"]


def _record(k: int) -> dict:
    m = np.zeros((48, 64), bool)
    m[10:20, 2 + k:12 + k] = True
    return {"schema": 2, "frame": k, "pts": k / 25, "stream": "0", "size": [48, 64],
            "layers": {"instances": {"kind": "instances", "items": [
                {"class_id": 2, "score": 0.9, "box": [2 + k, 10, 12 + k, 20], "mask": encode_mask(m)}]}}}


def _replace(obj: object, key: str, value: object) -> object:
    """``obj`` with every ``key`` set to ``value``."""
    if isinstance(obj, dict):
        return {k: value if k == key else _replace(v, key, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, key, value) for v in obj]
    return obj


_SCALARS = st.none() | st.booleans() | st.integers() | _FLOATS | st.text(max_size=6)


@pytest.mark.parametrize("key", _KEYS)
@settings(max_examples=max(20, settings.default.max_examples // 3))  # one property per key: a third each
@given(value=st.one_of(_EDGES, _SCALARS, _JSON), line=st.integers(0, 2),
       cut=st.one_of(st.just(0), st.integers(1, 400)))
def test_jsonl_with_odd_values(folder: Path, key: str, value: object, line: int, cut: int) -> None:
    records = [json.dumps(_record(k)) for k in range(3)]
    records[line] = json.dumps(_replace(_record(line), key, value))
    text = "\n".join(records)
    path = folder / "odd.jsonl"
    path.write_text(text[:len(text) - cut], encoding="utf-8")  # and maybe cut off
    _frames_or_config_error(path, "jsonl")


# --- written, then read back the same -------------------------------------------------------------

_COORD = st.integers(-10**7, 10**7).map(lambda v: v / 1000)
_SIZE = st.integers(0, 10**7).map(lambda v: v / 1000)


@given(frames=st.lists(st.tuples(st.integers(1, 3), st.lists(st.tuples(_COORD, _COORD, _SIZE, _SIZE, _SIZE),
                                                             min_size=1, max_size=4)), min_size=1, max_size=6))
def test_mot_round_trip(folder: Path, frames: list) -> None:
    path, number, written = folder / "rt.txt", 0, {}
    writer = MotWriter(path)
    for step, rows in frames:
        number += step
        a = np.array(rows, np.float64)
        boxes = np.concatenate([a[:, :2], a[:, :2] + a[:, 2:4]], axis=1)
        dets = Detections(boxes, a[:, 4], np.ones(len(a), np.int64))
        tracks = TrackedObjects(np.arange(1, len(a) + 1), np.arange(len(a)), boxes, a[:, 4], dets.class_ids)
        writer.write(FrameDets(number, 0.0, dets), tracks, [None] * len(a))
        written[number] = a
    writer.close()
    read = {f.frame: f for f in _read(path, "mot")}
    assert sorted(read) == list(range(frames[0][0], number + 1))
    for frame, a in written.items():
        got = read[frame].dets
        np.testing.assert_allclose(got.boxes[:, :2], a[:, :2], atol=1e-9)
        np.testing.assert_allclose(got.boxes[:, 2:] - got.boxes[:, :2], a[:, 2:4], atol=2e-3)
        np.testing.assert_allclose(got.scores, a[:, 4], atol=1e-9)
    assert sum(len(f.dets) for f in read.values()) == sum(map(len, written.values()))


@st.composite
def _label_frames(draw: st.DrawFn) -> tuple[tuple[int, int], list[np.ndarray]]:
    """Per frame a label image (0: background, k: object k), so the masks never overlap."""
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    frames = []
    for _ in range(draw(st.integers(1, 4))):
        seed = draw(st.integers(0, 2**32 - 1))
        frames.append(np.random.default_rng(seed).integers(0, draw(st.integers(1, 4)), (h, w)))
    return (h, w), frames


@given(scene=_label_frames(), class_id=st.sampled_from([1, 2, 7]))
def test_mots_round_trip(folder: Path, scene: tuple[tuple[int, int], list[np.ndarray]], class_id: int) -> None:
    (h, w), labels = scene
    path = folder / "rt_mots.txt"
    writer = MotsWriter(path)
    expected = {}
    for k, label in enumerate(labels, 1):
        masks = [label == v for v in range(1, int(label.max()) + 1)]
        rles = [encode_mask(m) for m in masks]
        n = len(rles)
        boxes, scores = np.zeros((n, 4)), np.linspace(0.9, 0.5, n)
        dets = Detections(boxes, scores, np.full(n, class_id, np.int64))
        tracks = TrackedObjects(np.arange(1, n + 1), np.arange(n), boxes, scores, dets.class_ids)
        writer.write(FrameDets(k, 0.0, dets, rles), tracks, rles)
        expected[k] = sorted(m.tobytes() for m in masks if m.any())
    writer.close()
    read = {f.frame: f for f in _read(path, "mots")}
    for k, masks in expected.items():
        if not masks:
            continue  # a frame with no masks writes no line: nothing to read back
        got = read[k]
        assert sorted(decode_mask(r).tobytes() for r in got.rles) == masks
        assert (got.dets.class_ids == class_id).all() and (got.dets.scores == 1.0).all()


_ITEM = st.tuples(st.integers(-10**5, 10**5), st.integers(-10**5, 10**5), st.integers(0, 10**5),
                  st.integers(0, 10**5), st.integers(0, 10**4), st.integers(0, 90))


@given(frames=st.lists(st.lists(_ITEM, max_size=4), min_size=1, max_size=5), masked=st.booleans())
def test_jsonl_round_trip(folder: Path, frames: list, masked: bool) -> None:
    path, size = folder / "rt.jsonl", (16, 20)
    writer = JsonlWriter(path)
    expected = []
    for k, items in enumerate(frames):
        found = []
        for x, y, bw, bh, score, class_id in items:
            box = [x / 100, y / 100, (x + bw) / 100, (y + bh) / 100]
            item = {"class": str(class_id), "class_id": class_id, "score": score / 10**4, "box": box}
            if masked:
                m = np.zeros(size, bool)
                m[k % 16:, class_id % 20:] = True
                item["mask"] = encode_mask(m)
            found.append(item)
        record = {"schema": 2, "frame": k, "pts": k / 30, "stream": "0", "size": list(size),
                  "layers": {"instances": {"kind": "instances", "items": found}}}
        n = len(found)
        dets = Detections(np.array([i["box"] for i in found]).reshape(-1, 4), np.array([i["score"] for i in found]),
                          np.array([i["class_id"] for i in found], np.int64))
        tracks = TrackedObjects(np.arange(1, n + 1), np.arange(n), dets.boxes, dets.scores, dets.class_ids)
        writer.write(FrameDets(k, k / 30, dets, record=record), tracks, [None] * n)
        expected.append(found)
    writer.close()
    read = _read(path, "jsonl")
    assert [f.frame for f in read] == list(range(len(frames)))
    for f, found in zip(read, expected):
        assert f.t == pytest.approx(f.frame / 30)
        np.testing.assert_array_equal(f.dets.boxes, np.array([i["box"] for i in found]).reshape(-1, 4))
        np.testing.assert_array_equal(f.dets.scores, [i["score"] for i in found])
        np.testing.assert_array_equal(f.dets.class_ids, [i["class_id"] for i in found])
        assert [i["track_id"] for i in f.record["layers"]["instances"]["items"]] == list(range(1, len(found) + 1))
        if masked and found:
            assert f.rles == [i["mask"] for i in found]


# --- no huge allocation, under a memory cap ----------------------------------------------------------

_CAPPED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    import json, tempfile
    from pathlib import Path
    from hypothesis import given, settings, strategies as st
    from segengine.errors import ConfigError
    from segengine.tracking import limits
    from segengine.tracking.formats import read_frames

    def one_run(n):  # a compressed COCO RLE of one background run of n pixels (pycocotools' rleToString)
        out = ""
        while True:
            c, n = n & 0x1F, n >> 5
            more = not (n == 0 and not c & 0x10)
            out += chr(c + (0x20 if more else 0) + 48)
            if not more:
                return out

    folder = Path(tempfile.mkdtemp())
    side = st.one_of(st.integers(1, 20000), st.integers(1, 10**6), st.sampled_from([16384, 4096, 8192, 100000]))

    @settings(max_examples=int(sys.argv[1]), deadline=None, derandomize=True, database=None)
    @given(h=side, w=side, n=st.integers(1, 3), fmt=st.sampled_from(["mots", "jsonl"]))
    def capped(h, w, n, fmt):
        counts = one_run(h * w)
        if fmt == "mots":
            text = f"1 -1 1 0.9 {h} {w} {counts}\\n" * n
        else:
            items = [{"class_id": 1, "score": 0.9, "box": [0, 0, 1, 1], "mask": {"size": [h, w], "counts": counts}}]
            text = json.dumps({"frame": 1, "size": [h, w], "layers": {"i": {"kind": "instances",
                                                                               "items": items * n}}}) + "\\n"
        path = folder / "big.txt"
        path.write_text(text)
        fits = h <= limits.MAX_MASK_SIDE and w <= limits.MAX_MASK_SIDE and h * w <= limits.MAX_MASK_PIXELS
        try:
            frames = list(read_frames(path, fmt, 25.0))
        except ConfigError as exc:
            assert not fits and f"{h}×{w}" in str(exc), (h, w, exc)
        else:
            assert fits and len(frames) == 1 and len(frames[0].dets) == n, (h, w)

    capped()
    print("capped ok")
""")


def test_mask_sizes_under_a_memory_cap() -> None:
    examples = max(10, settings.default.max_examples // 3)  # each in-bounds example decodes up to 64 Mpx
    done = subprocess.run([sys.executable, "-c", _CAPPED, str(examples)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and "capped ok" in done.stdout, done.stderr[-3000:]
