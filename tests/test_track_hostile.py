"""``segengine track`` on hostile and damaged files: a clear error naming the line (exit 2) and
nothing left behind, or, for a cut-off last line, the tracks of the good lines (exit 3).

Each reported case runs through the real CLI; the bounds (segengine.tracking.limits) and the
inputs the fuzzers found are plain regression cases below.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from segengine.cli import main
from segengine.errors import ConfigError
from segengine.rle import encode_mask
from segengine.tracking import limits, lines
from segengine.tracking.formats import Damage, detect_format, frame_rate, read_frames

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

H, W = 48, 64


def _mask(k: int, h: int = H) -> dict:
    m = np.zeros((h, W), bool)
    m[10:20, 2 + 2 * k:12 + 2 * k] = True
    return encode_mask(m)


def _record(k: int) -> dict:
    return {"schema": 2, "frame": k, "pts": k / 25, "stream": "0", "size": [H, W],
            "layers": {"instances": {"kind": "instances", "items": [
                {"track_id": None, "class": "car", "class_id": 2, "score": 0.9,
                 "box": [2 + 2 * k, 10, 12 + 2 * k, 20], "mask": _mask(k)}]}}}


def _jsonl(n: int) -> str:
    return "".join(json.dumps(_record(k)) + "\n" for k in range(n))


def _mot(n: int) -> str:
    return "".join(f"{k},-1,{10 + 2 * k},20,30,40,0.9,-1,-1,-1\n" for k in range(1, n + 1))


def _mots(n: int) -> str:
    return "".join(f"{k} -1 1 0.9 {H} {W} {_mask(k)['counts']}\n" for k in range(1, n + 1))


def _track(capsys: pytest.CaptureFixture[str], src: Path, dst: Path, *extra: str) -> tuple[int, str]:
    code = main(["track", str(src), "-o", str(dst), "-q", *extra])
    return code, capsys.readouterr().err


def _left_behind(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- the reported cases, through the CLI -------------------------------------------------------

@pytest.mark.parametrize("frame", ["inf", "1e400", "nan", "-inf"])
def test_non_finite_frame_exits_2_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  frame: str) -> None:
    src = tmp_path / "det.txt"
    src.write_text(_mot(3) + f"{frame},-1,10,20,30,40,0.9\n" + "9,-1,10,20,30,40,0.9\n")
    code, err = _track(capsys, src, tmp_path / "tracks.txt")
    assert code == 2 and err.startswith(f"segengine: error: {src} line 4: "), err
    assert f"frame '{frame}' is not a" in err and "Traceback" not in err
    assert _left_behind(tmp_path, {"det.txt"}) == []


def test_huge_frame_gap_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "det.txt"
    src.write_text("1,-1,10,20,30,40,0.9\n9000000,-1,10,20,30,40,0.9\n")
    start = time.perf_counter()
    code, err = _track(capsys, src, tmp_path / "tracks.txt")
    assert time.perf_counter() - start < 10  # it used to fill ~57,000 empty frames a second
    assert code == 2 and f"{src} line 2: frame 9000000 comes 8,999,999 frames after frame 1" in err, err
    assert f"{limits.MAX_FRAME_GAP:,}" in err
    assert _left_behind(tmp_path, {"det.txt"}) == []


def test_gap_at_the_bound_is_tracked(tmp_path: Path) -> None:
    src = tmp_path / "det.txt"
    src.write_text(f"1,-1,10,20,30,40,0.9\n{1 + limits.MAX_FRAME_GAP},-1,10,20,30,40,0.9\n")
    frames = read_frames(src, "mot", 25.0)
    assert next(frames).frame == 1 and sum(1 for _ in frames) == limits.MAX_FRAME_GAP


def test_huge_mots_mask_is_refused_before_allocating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dets.txt"
    src.write_text(_mots(2) + "3 -1 1 0.9 100000 100000 0o\n")
    code, err = _track(capsys, src, tmp_path / "tracks.txt")
    assert code == 2 and f"{src} line 3: " in err and "100000×100000" in err and "16,384" in err, err
    assert _left_behind(tmp_path, {"dets.txt"}) == []


def test_cut_off_jsonl_gives_the_good_frames_and_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dets.jsonl"
    whole = _jsonl(12)
    src.write_text(whole[:len(whole) - 1 - len(json.dumps(_record(11))) // 2])  # line 12 cut half-way
    dst = tmp_path / "tracks.jsonl"
    code, err = _track(capsys, src, dst)
    assert code == 3, err
    assert f"{src} line 12 is cut off" in err and "the 11 frames before it were tracked" in err
    records = [json.loads(t) for t in dst.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(11))
    ids = {i["track_id"] for r in records[2:] for i in r["layers"]["instances"]["items"]}
    assert len(ids) == 1 and None not in ids  # one object, tracked once confirmed
    assert _left_behind(tmp_path, {"dets.jsonl", "tracks.jsonl"}) == []


@pytest.mark.parametrize("fmt, cut", [
    ("mot", "6,-1,10,2"),  # too few fields
    ("mots", "6 -1 1 0.9 48 64 52"),  # runs short of the mask
    ("mots", "6 -1 1 0.9 4"),
    ("mot", "6,-1,10,20,30,40,0.9\x00\x00\x00"),  # the zeros a crash can leave
    ("mot", "6,-1,10,20,30,40,0.9,\xc3"),  # a UTF-8 character cut in two (written as latin-1 below)
])
def test_cut_off_text_last_line_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str,
                                        cut: str) -> None:
    src = tmp_path / "dets.txt"
    src.write_bytes(({"mot": _mot, "mots": _mots}[fmt](5) + cut).encode("latin-1"))
    dst = tmp_path / "tracks.txt"
    code, err = _track(capsys, src, dst)
    assert code == 3 and f"{src} line 6 is cut off" in err and "the 5 frames before it" in err, err
    assert dst.read_text().count("\n") >= 3  # the good frames' tracks (from the 2nd detection on)


def test_last_line_without_newline_that_parses_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dets.jsonl"
    src.write_text(_jsonl(4).rstrip("\n"))
    code, err = _track(capsys, src, tmp_path / "tracks.jsonl")
    assert code == 0 and err == ""
    assert len((tmp_path / "tracks.jsonl").read_text().splitlines()) == 4


def test_bad_line_in_the_middle_is_an_error_not_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dets.jsonl"
    good = _jsonl(6).splitlines(keepends=True)
    src.write_text("".join(good[:3]) + good[3][:40] + "\n" + "".join(good[4:]))
    code, err = _track(capsys, src, tmp_path / "tracks.jsonl")
    assert code == 2 and f"{src} line 4: expected a segengine JSON line" in err, err
    assert _left_behind(tmp_path, {"dets.jsonl"}) == []


def test_failure_leaves_an_existing_output_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "det.txt", tmp_path / "tracks.txt"
    src.write_text(_mot(20) + "21,-1,10,20,30,40,1e999\n")
    dst.write_text("earlier results\n")
    code, err = _track(capsys, src, dst, "--overwrite")
    assert code == 2 and f"{src} line 21: " in err and "conf '1e999' is out of range" in err, err
    assert dst.read_text() == "earlier results\n"
    assert _left_behind(tmp_path, {"det.txt", "tracks.txt"}) == []


# --- the bounds and the fuzzers' finds, one line each --------------------------------------------

_HEAD = '{"schema": 2, "frame": 1, "size": [48, 64], "layers": {"instances": {"kind": "instances", "items": ['
_ITEM = '{"class_id": 2, "score": 0.9, "box": [1, 2, 3, 4]}'


def _items(*items: str) -> str:
    return _HEAD + ", ".join(items) + "]}}}"


@pytest.mark.parametrize("fmt, line, expected", [
    ("mot", "²,-1,10,20,30,40,0.9", "frame '²' is not a number"),  # float() and int() take unicode digits
    ("mot", "١٢,-1,10,20,30,40,0.9", "frame '١٢' is not a number"),
    ("mot", "1_000,-1,10,20,30,40,0.9", "frame '1_000' is not a number"),
    ("mot", "20000000,-1,10,20,30,40,0.9", "frame '20000000' is not a whole number 0 … 10,000,000"),
    ("mot", "2.5,-1,10,20,30,40,0.9", "is not a whole number"),
    ("mot", "2,-1,1e300,20,30,40,0.9", "x '1e300' is beyond ±1,000,000 px"),
    ("mot", "2,-1,10,20,-30,40,0.9", "w or h is negative"),
    ("mot", "2,-1,10,20,30,40,nan", "conf 'nan' is not a number"),
    ("mot", "2,-1,10,20,30,40,0.9\x00", "a NUL byte at column 21"),
    ("mots", "2 -1 1 0.9 16385 10 0o", "each side must be 1 … 16,384 px"),
    ("mots", "2 -1 1 0.9 16384 16384 0o", "over 67,108,864 pixels"),
    ("mots", "2 -1 1 0.9 0 10 0", "each side must be 1"),
    ("mots", "2 -1 99999999999 0.9 48 64 0o", "class_id '99999999999' is not a whole number 0 … 1,000,000"),
    ("mots", "2 -1 1 0.9 48 64 " + "o" * 20 + "0", "expected a COCO RLE mask of [48, 64]: a run is too long"),
    ("mots", "2 -1 1 0.9 48 64 @", "expected a COCO RLE mask of [48, 64]: the runs do not add up"),  # negative
    ("mots", "2 -1 1 0.9 48 64 52", "the runs do not add up"),  # short: pycocotools left the rest uninitialised
    ("mots", "2 -1 1 0.9 48 64 `", "the last run is cut off"),
    ("mots", "2 -1 1 0.9 48 64 00PP3", "a run of length 0 after the first"),  # toBbox: 4e9 px wide
    ("mots", f"2 -1 1 0.9 40 64 {_mask(1, 40)['counts']}", "earlier lines' are [48, 64]"),
    ("jsonl", "[" * 100_000, "nested deeper than 32 levels"),  # json.loads: RecursionError
    ("jsonl", '{"frame": 1, "size": [48, 64], "x": ' + "[" * 40 + "]" * 40 + "}", "nested deeper than 32"),
    ("jsonl", '{"frame": NaN, "size": [48, 64]}', "NaN is no number JSON allows"),
    ("jsonl", '{"frame": 1, "size": [48, 64], "pts": Infinity}', "Infinity is no number JSON allows"),
    ("jsonl", '{"frame": 1, "size": [48, 64], "pts": 1e400}', "number 1e400 is out of range"),
    ("jsonl", '{"frame": "3", "size": [48, 64]}', "frame '\"3\"' is not a whole number"),
    ("jsonl", '{"frame": true, "size": [48, 64]}', "frame True is not a whole number"),
    ("jsonl", '{"frame": [1], "size": [48, 64]}', "frame '[1]' is not a whole number"),
    ("jsonl", '{"frame": 1, "size": [48, 1e10]}', "frame size 48×10000000000"),
    ("jsonl", '{"frame": 1, "size": [100000, 100000]}', "frame size 100000×100000"),
    ("jsonl", '{"frame": 1, "size": [48, 64], "pts": "0.5"}', "pts '\"0.5\"' is not a finite number"),
    ("jsonl", _items('{"class_id": 1' + "0" * 30 + ', "score": 0.9, "box": [1, 2, 3, 4]}'),
     f"class_id 1{'0' * 30} is not a whole number"),  # np.int64: OverflowError
    ("jsonl", _items('{"class_id": 2, "score": 1' + "0" * 400 + ', "box": [1, 2, 3, 4]}'),
     "score 1000"),  # float(): OverflowError
    ("jsonl", _items('{"class_id": 2, "score": false, "box": [1, 2, 3, 4]}'), "score False"),
    ("jsonl", _items('{"class_id": 2, "score": 0.9, "box": [1, 2, 3, "4"]}'), "box '\"4\"'"),
    ("jsonl", _items('{"class_id": 2, "score": 0.9, "box": [5, 2, 3, 4]}'), "ends before it starts"),
    ("jsonl", _items('{"class_id": 2, "score": 0.9, "box": [1, 2, 3, 4e9]}'), "within ±1,000,000"),
    ("jsonl", _items('{"class_id": 2, "score": 0.9, "box": [1, 2, 3, 4], "mask": {"size": [48, 64], '
                     '"counts": "52"}}'), "mask the runs do not add up"),
    ("jsonl", _items('{"class_id": 2, "score": 0.9, "box": [1, 2, 3, 4], "mask": {"size": [48, 64], '
                     '"counts": [3072]}}'), "counts are not a compressed RLE string"),
    ("jsonl", _items('"car"'), "instance 0 is a str"),
    ("jsonl", _HEAD[:-1] + '"cars"}}}', "items are a str, not a list"),
    ("jsonl", _items(*[_ITEM] * 2001), "2,001 instances, over the 2,000"),
    ("jsonl", '"frame"', "a JSON str, not an object"),
])
def test_hostile_line_is_a_clear_error(tmp_path: Path, fmt: str, line: str, expected: str) -> None:
    good = {"mot": "1,-1,10,20,30,40,0.9\n", "mots": f"1 -1 1 0.9 48 64 {_mask(0)['counts']}\n",
            "jsonl": json.dumps({**_record(0), "layers": {}}) + "\n"}[fmt]
    src = tmp_path / ("dets.jsonl" if fmt == "jsonl" else "dets.txt")
    src.write_text(good + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        list(read_frames(src, fmt, 25.0))
    assert f"{src} line 2: " in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("fmt, data, expected", [
    # atheris (tracking:mots): an empty run after the first made pycocotools' toBbox wrap round to a box
    # 4e9 px wide, and MaskGrid.down's window then raised numpy's "array is too big" ValueError
    ("mots", b"1 -0 5 48 64 PP3\n4 -1 5 48 64 PP3\n200 0 2 48 64 0000000000PP3\n28!48 `",
     "line 3: expected a COCO RLE mask of [48, 64]: a run of length 0 after the first"),
])
def test_fuzzer_finds(tmp_path: Path, fmt: str, data: bytes, expected: str) -> None:
    src = tmp_path / "found.dat"
    src.write_bytes(data)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        list(read_frames(src, fmt, 25.0, damage=Damage()))


def test_too_many_detections_in_a_frame(tmp_path: Path) -> None:
    src = tmp_path / "det.txt"
    src.write_text("2,-1,10,20,30,40,0.9\n" * (limits.MAX_DETECTIONS + 1))
    with pytest.raises(ConfigError, match=f"line {limits.MAX_DETECTIONS + 1}: frame 2 has more than 2,000 "):
        list(read_frames(src, "mot", 25.0))
    src.write_text("2,-1,10,20,30,40,0.9\n" * limits.MAX_DETECTIONS)
    assert len(next(read_frames(src, "mot", 25.0)).dets) == limits.MAX_DETECTIONS


def test_big_masks_get_a_smaller_per_frame_bound(tmp_path: Path) -> None:
    h, w = 8192, 8192  # 2^22 grid cells a mask: 64 of them fill the 2^28 cells a frame's masks may take
    whole = encode_mask(np.zeros((h, w), bool))["counts"]
    src = tmp_path / "dets.txt"
    src.write_text(f"1 -1 1 0.9 {h} {w} {whole}\n" * 65)
    with pytest.raises(ConfigError, match="line 65: frame 1 has more than 64 detections"):
        next(read_frames(src, "mots", 25.0))


def test_overlong_line_is_refused_without_reading_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lines, "MAX_LINE_BYTES", 1000)
    src = tmp_path / "dets.jsonl"
    src.write_text(json.dumps(_record(0)) + "\n" + "{" + " " * 5000 + "\n")
    read = []
    with pytest.raises(ConfigError, match="line 2: longer than"):
        list(read_frames(src, "jsonl", 25.0, on_bytes=read.append))
    assert read[-1] == 1001


def test_damage_is_noted_only_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "dets.jsonl"
    src.write_text(_jsonl(3) + '{"frame": 3, "si')
    with pytest.raises(ConfigError, match="line 4: expected a segengine JSON line"):
        list(read_frames(src, "jsonl", 25.0))
    damage = Damage()
    assert [f.frame for f in read_frames(src, "jsonl", 25.0, damage=damage)] == [0, 1, 2]
    assert damage and damage.line == 4 and damage.reason.startswith("expected a segengine JSON line")


@pytest.mark.parametrize("ini, expected", [
    ("frameRate=inf", "frameRate 'inf' is not a number"),
    ("frameRate=1e400", "frameRate '1e400' is out of range"),
    ("frameRate=1e-300", "frameRate 1e-300 is out of range: expected 0.001 … 100,000"),
    ("frameRate=²", "is not a number"),
    ("frameRate=\udcff", "expected [Sequence] frameRate=<number>"),  # byte 0xff: not UTF-8
])
def test_seqinfo_frame_rate_is_checked(tmp_path: Path, ini: str, expected: str) -> None:
    (tmp_path / "seqinfo.ini").write_bytes(f"[Sequence]\n{ini}\n".encode("utf-8", "surrogateescape"))
    src = tmp_path / "det.txt"
    src.write_text(_mot(2))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        frame_rate(src, None)
    with pytest.raises(ConfigError, match="--fps inf is out of range"):
        frame_rate(src, float("inf"))
    assert frame_rate(src, 30.0) == 30.0


@pytest.mark.parametrize("text", ["²,1,2,3,4,5,6", "1 2 3 4 5 6 ١"])
def test_detect_format_takes_ascii_numbers_only(tmp_path: Path, text: str) -> None:
    src = tmp_path / "dets.dat"
    src.write_text(text + "\n")
    assert detect_format(src) in ("mot", "mots")  # by the commas or the six fields, not by the digits
    src.write_text("1 2 3 4 5 6 7 ²\n")
    with pytest.raises(ConfigError, match="line 1: cannot tell the format"):
        detect_format(src)
