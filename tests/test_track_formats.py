"""``segengine track``: MOT, MOTS and JSONL detections in, tracks out in the same format.

Every input is a small synthetic scene made here: two objects of different classes moving
in opposite directions on separate rows, one detection each per frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segengine.errors import ConfigError
from segengine.layers import LaneLines
from segengine.rle import decode_mask, encode_mask
from segengine.sinks.jsonl import read_jsonl
from segengine.tracking.base import TrackedObjects
from segengine.tracking.formats import MaskGrid, detect_format, frame_rate, read_frames
from segengine.tracking.offline import track_file
from segengine.tracking.writers import MotsWriter, MotWriter
from tests.factories import class_map

# pycocotools' decode, under numpy 2, warns about its own __array__: nothing of ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

H, W, FRAMES = 120, 160, 8
NAMES = {1: "car", 2: "pedestrian"}


def _scene() -> list[list[dict]]:
    """Per frame, per object: box xyxy, bool mask, class, score. Object 0 moves right, 1 left."""
    frames = []
    for k in range(FRAMES):
        objs = []
        for obj, (x, y, w, h, cls, score) in enumerate([(10 + 6 * k, 20, 24, 16, 1, 0.9),
                                                         (120 - 6 * k, 70, 14, 30, 2, 0.8)]):
            mask = np.zeros((H, W), bool)
            mask[y:y + h, x:x + w] = True
            objs.append({"obj": obj, "box": [x, y, x + w, y + h], "mask": mask, "class": cls, "score": score})
        frames.append(objs)
    return frames


def _write_mot(path: Path, scene: list[list[dict]]) -> Path:
    lines = [f"{k + 1},-1,{o['box'][0]},{o['box'][1]},{o['box'][2] - o['box'][0]},{o['box'][3] - o['box'][1]},"
             f"{o['score']},-1,-1,-1" for k, objs in enumerate(scene) for o in objs]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_mots(path: Path, scene: list[list[dict]]) -> Path:
    lines = [f"{k + 1} -1 {o['class']} {o['score']} {H} {W} {encode_mask(o['mask'])['counts']}"
             for k, objs in enumerate(scene) for o in objs]
    path.write_text("\n".join(lines) + "\n")
    return path


def _lane_layer() -> dict:
    """A lane layer as the engine writes it (schema 2): it passes through the tracker untouched."""
    return class_map(LaneLines, frame_size=(H, W), grid=(60, 80), classes=("background", "lane"),
                     fill={1: (slice(40, None), slice(20, 22))}).to_json()


def _write_jsonl(path: Path, scene: list[list[dict]], name: str = "instances") -> Path:
    """Schema 2 lines: a lane layer, then the detections as an instances layer called ``name``."""
    records = [{"schema": 2, "frame": k, "pts": k / 30, "stream": "0", "size": [H, W],
                "layers": {"lanes": _lane_layer(),
                           name: {"kind": "instances", "items": [
                               {"track_id": None, "class": NAMES[o["class"]], "class_id": o["class"],
                                "score": o["score"], "box": o["box"], "mask": encode_mask(o["mask"])}
                               for o in objs]}},
                "timings_ms": {"infer": 1.0}, "source": None} for k, objs in enumerate(scene)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segengine.cli", "track", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _nearest(scene_frame: list[dict], box: list[float]) -> int:
    """Which scene object a written box belongs to."""
    centre = np.add(box[:2], box[2:]) / 2
    return int(np.argmin([np.hypot(*(np.add(o["box"][:2], o["box"][2:]) / 2 - centre)) for o in scene_frame]))


def _one_id_per_object(pairs: list[tuple[int, int]]) -> None:
    """(object, id) pairs over all frames: each object keeps one id, and the ids differ."""
    ids = {obj: {i for o, i in pairs if o == obj} for obj, _ in pairs}
    assert sorted(ids) == [0, 1] and all(len(v) == 1 for v in ids.values()), ids
    assert ids[0] != ids[1]


def _tracks(ids: list[int], classes: list[int], scores: list[float], boxes: np.ndarray) -> TrackedObjects:
    n = len(ids)
    return TrackedObjects(np.array(ids, np.int64), np.arange(n), boxes, np.array(scores), np.array(classes, np.int64))


# --- formats --------------------------------------------------------------------------------

def test_mot_round_trip_keeps_boxes_and_writes_ids(tmp_path: Path) -> None:
    src = _write_mot(tmp_path / "det.txt", _scene())
    frames = list(read_frames(src, "mot", 25.0))
    assert [f.frame for f in frames] == list(range(1, FRAMES + 1)) and frames[2].t == pytest.approx(3 / 25)
    writer = MotWriter(tmp_path / "out.txt")
    for f in frames:
        writer.write(f, _tracks([7, 9], [1, 1], list(f.dets.scores), f.dets.boxes), [None, None])
    writer.close()
    again = list(read_frames(tmp_path / "out.txt", "mot", 25.0))
    for a, b in zip(frames, again):
        np.testing.assert_allclose(a.dets.boxes, b.dets.boxes, atol=1e-3)
        np.testing.assert_allclose(a.dets.scores, b.dets.scores)
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert [line.split(",")[1] for line in lines[:2]] == ["7", "9"] and lines[0].endswith(",-1,-1,-1")
    assert lines[0] == "1,7,10,20,24,16,0.9,-1,-1,-1"


def test_mot_variants_gaps_and_seqinfo(tmp_path: Path) -> None:
    # 7 columns, spaces after commas, a 10-column line with world coordinates, frames 1, 2, 5
    (tmp_path / "det").mkdir()
    src = tmp_path / "det" / "det.txt"
    src.write_text("1,-1,10,20,30,40,0.9\n2, -1, 11, 20, 30, 40, 0.8, 1.5, 2.5, 0\n5,-1,12,20,30,40,0.7,-1,-1,-1\n")
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=S\nframeRate=30\nseqLength=5\n")
    assert detect_format(src) == "mot" and frame_rate(src, None) == 30.0 and frame_rate(src, 10.0) == 10.0
    frames = list(read_frames(src, "mot", 30.0))
    assert [f.frame for f in frames] == [1, 2, 3, 4, 5] and [len(f.dets) for f in frames] == [1, 1, 0, 0, 1]
    np.testing.assert_allclose(frames[1].dets.boxes, [[11, 20, 41, 60]])


def test_mots_round_trip_masks_ids_and_scores(tmp_path: Path) -> None:
    scene = _scene()
    src = _write_mots(tmp_path / "dets.txt", scene)
    assert detect_format(src) == "mots"
    frames = list(read_frames(src, "mots", 25.0))
    first = frames[0]
    np.testing.assert_allclose(first.dets.scores, [0.9, 0.8])  # the extra score column
    np.testing.assert_array_equal(first.dets.class_ids, [1, 2])
    np.testing.assert_allclose(first.dets.boxes, [o["box"] for o in scene[0]])  # the masks' extent
    assert first.dets.masks.shape == (2, H // 4, W // 4) and first.dets.masks.dtype == np.uint8
    writer = MotsWriter(tmp_path / "out.txt")
    for f in frames:  # tracker ids 41 and 42: class 1 and class 2 each number their instances from 1
        writer.write(f, _tracks([41, 42], [1, 2], [0.9, 0.8], f.dets.boxes), f.rles)
    writer.close()
    rows = [line.split() for line in (tmp_path / "out.txt").read_text().splitlines()]
    assert all(len(r) == 6 for r in rows) and {(r[1], r[2]) for r in rows} == {("1001", "1"), ("2001", "2")}
    for r in rows:
        assert int(r[1]) // 1000 == int(r[2]) and int(r[1]) % 1000 == 1  # the MOTS convention
    again = list(read_frames(tmp_path / "out.txt", "mots", 25.0))
    for k, f in enumerate(again):
        for d, o in enumerate(scene[k]):
            np.testing.assert_array_equal(decode_mask(f.rles[d]), o["mask"])
        np.testing.assert_allclose(f.dets.scores, 1.0)  # six columns: no score


def test_mots_writer_makes_overlapping_masks_disjoint(tmp_path: Path) -> None:
    a, b = np.zeros((H, W), bool), np.zeros((H, W), bool)
    a[10:50, 10:50], b[30:70, 30:70] = True, True
    src = tmp_path / "dets.txt"
    src.write_text(f"1 -1 1 0.6 {H} {W} {encode_mask(a)['counts']}\n1 -1 1 0.9 {H} {W} {encode_mask(b)['counts']}\n")
    frame = next(read_frames(src, "mots", 25.0))
    writer = MotsWriter(tmp_path / "out.txt")
    writer.write(frame, _tracks([1, 2], [1, 1], [0.6, 0.9], frame.dets.boxes), frame.rles)
    writer.close()
    written = {r.split()[1]: decode_mask({"size": [H, W], "counts": r.split()[5]})
               for r in (tmp_path / "out.txt").read_text().splitlines()}
    # the stronger track (score 0.9) was seen first, so it is instance 1
    np.testing.assert_array_equal(written["1001"], b)
    np.testing.assert_array_equal(written["1002"], a & ~b)


def test_mask_grid_down_and_up() -> None:
    grid = MaskGrid((H, W))
    mask = np.zeros((H, W), bool)
    mask[21:63, 33:90] = True
    small = grid.down(mask, np.array([33, 21, 57, 42]))
    assert small.shape == (30, 40) and small.max() == 255 and 0 < small[5, 8] < 255  # a partly covered cell
    back = grid.up(small)
    assert (back & mask).sum() / (back | mask).sum() > 0.95
    whole = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR) >= 128  # up() resizes a window only
    np.testing.assert_array_equal(back, whole)
    assert back.flags.f_contiguous and not grid.up(np.zeros_like(small)).any()


# --- track_file and the CLI -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["instances", "objects"])  # found by its kind, whatever its name
def test_jsonl_gets_track_ids_and_keeps_the_rest(tmp_path: Path, name: str) -> None:
    scene = _scene()
    src = _write_jsonl(tmp_path / "dets.jsonl", scene, name)
    summary = track_file(src, tmp_path / "tracks.jsonl", progress=False)
    assert (summary.fmt, summary.frames, summary.tracks, summary.rows) == ("jsonl", FRAMES, 2, 2 * FRAMES)
    records = list(read_jsonl(tmp_path / "tracks.jsonl"))
    assert [r["pts"] for r in records] == [k / 30 for k in range(FRAMES)]
    assert all(r["schema"] == 2 and r["timings_ms"] == {"infer": 1.0} and r["source"] is None for r in records)
    assert all(list(r["layers"]) == ["lanes", name] and r["layers"]["lanes"] == _lane_layer() for r in records)
    pairs = []
    for k, r in enumerate(records):
        layer = r["layers"][name]
        assert set(layer) == {"kind", "items"} and layer["kind"] == "instances"
        for inst in layer["items"]:
            assert set(inst) == {"track_id", "class", "class_id", "score", "box", "mask"}
            assert inst["class"] == NAMES[inst["class_id"]] and isinstance(inst["track_id"], int)
            pairs.append((_nearest(scene[k], inst["box"]), inst["track_id"]))
    _one_id_per_object(pairs)


def test_cli_mot(tmp_path: Path) -> None:
    scene = _scene()
    out = _cli(_write_mot(tmp_path / "det.txt", scene), "-o", tmp_path / "tracks.txt", "--max-lost", "1")
    assert out.returncode == 0, out.stderr
    assert f"{FRAMES} frames" in out.stdout and "2 tracks" in out.stdout
    rows = [line.split(",") for line in (tmp_path / "tracks.txt").read_text().splitlines()]
    assert len(rows) == 2 * FRAMES and all(len(r) == 10 for r in rows)
    pairs = [(_nearest(scene[int(r[0]) - 1], [float(r[2]), float(r[3]), float(r[2]) + float(r[4]),
                                              float(r[3]) + float(r[5])]), int(r[1])) for r in rows]
    _one_id_per_object(pairs)


@pytest.mark.parametrize("smooth", [True, False])
def test_cli_mots(tmp_path: Path, smooth: bool) -> None:
    scene = _scene()
    args = [_write_mots(tmp_path / "dets.txt", scene), "-o", tmp_path / "tracks.txt", "-q"]
    out = _cli(*args, *([] if smooth else ["--no-smooth"]))
    assert out.returncode == 0 and out.stdout == "", out.stderr
    rows = [line.split() for line in (tmp_path / "tracks.txt").read_text().splitlines()]
    assert len(rows) == 2 * FRAMES and all(len(r) == 6 for r in rows)
    pairs = []
    for frame, obj_id, class_id, h, w, counts in rows:
        mask = decode_mask({"size": [int(h), int(w)], "counts": counts})
        obj = next(o for o in scene[int(frame) - 1] if o["class"] == int(class_id))
        iou = (mask & obj["mask"]).sum() / (mask | obj["mask"]).sum()
        # smoothed: brought up from the 1/4 grid and averaged over frames, so it may lag a moving
        # object a little; the detection's own mask otherwise, exactly
        assert iou == 1.0 if not smooth else iou > 0.5
        assert int(obj_id) // 1000 == int(class_id)
        pairs.append((obj["obj"], int(obj_id)))
    _one_id_per_object(pairs)


def test_cli_jsonl_by_content(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "dets.log", _scene())  # not .jsonl: told by its first line
    out = _cli(src, "-o", tmp_path / "tracks.log")
    assert out.returncode == 0, out.stderr
    assert len(list(read_jsonl(tmp_path / "tracks.log"))) == FRAMES


@pytest.mark.parametrize("fmt, bad, expected", [
    ("mot", "2,-1,10,abc,30,40,0.9", "expected MOT fields"),
    ("mot", "1,-1,10,20,30,40", "at least 7 numbers"),
    ("mots", "2 -1 1 0.9 120 160 !!notrle", "expected MOTS fields"),
    ("mots", "2 -1 1 0.9 120 160 52", "expected a COCO RLE mask"),  # runs that fall short of 120×160
    ("mots", "2 -1 1 0.9 120 160 0o", "expected a COCO RLE mask"),  # runs that overflow it
    ("jsonl", '{"schema": 2, "frame": 2, "size": [120, 160], "layers": {"instances": {"kind": "instances", '
              '"items": [{"box": [1, 2]}]}}}', "expected a segengine JSON line"),
    ("jsonl", '{"frame": 2, oops', "expected a segengine JSON line"),
    ("jsonl", '{"frame": 2, "size": [120, 160], "instances": []}', "older segengine (schema 1"),
])
def test_malformed_line_exits_2_naming_file_and_line(tmp_path: Path, fmt: str, bad: str, expected: str) -> None:
    writer = {"mot": _write_mot, "mots": _write_mots, "jsonl": _write_jsonl}[fmt]
    src = writer(tmp_path / ("dets.jsonl" if fmt == "jsonl" else "dets.txt"), _scene()[:3])
    good = src.read_text().splitlines()
    src.write_text("\n".join([*good[:2], "", bad, *good[2:]]) + "\n")  # the bad line is line 4
    dst = tmp_path / ("tracks.jsonl" if fmt == "jsonl" else "tracks.txt")
    out = _cli(src, "-o", dst)
    assert out.returncode == 2 and out.stderr.startswith("segengine: error: "), out.stderr
    assert f"{src} line 4: " in out.stderr and expected in out.stderr and "Traceback" not in out.stderr
    assert not dst.exists() and not Path(str(dst) + ".part").exists()  # no half-written results


def test_unsorted_mot_says_how_to_sort(tmp_path: Path) -> None:
    src = tmp_path / "det.txt"
    src.write_text("2,-1,10,20,30,40,0.9\n1,-1,10,20,30,40,0.9\n")
    out = _cli(src, "-o", tmp_path / "tracks.txt")
    assert out.returncode == 2 and f"{src} line 2: frame 1 comes after frame 2" in out.stderr
    assert "sort" in out.stderr


def test_unknown_format_exits_2(tmp_path: Path) -> None:
    src = _write_mot(tmp_path / "det.txt", _scene())
    out = _cli(src, "-o", tmp_path / "tracks.txt", "--format", "xml")
    assert out.returncode == 2 and "invalid choice: 'xml'" in out.stderr
    odd = tmp_path / "dets.dat"
    odd.write_text("hello world\n")
    out = _cli(odd, "-o", tmp_path / "tracks.dat")
    assert out.returncode == 2 and f"{odd} line 1: cannot tell the format" in out.stderr
    out = _cli(src, "-o", tmp_path / "tracks.jsonl")  # MOT in, so MOT out: not a .jsonl
    assert out.returncode == 2 and "should end in .txt" in out.stderr
    with pytest.raises(ConfigError, match="unknown format 'xml'"):
        track_file(src, tmp_path / "tracks.txt", fmt="xml")


def test_missing_input_and_bad_options_exit_2(tmp_path: Path) -> None:
    out = _cli(tmp_path / "none.txt", "-o", tmp_path / "tracks.txt")
    assert out.returncode == 2 and "no such file" in out.stderr
    src = _write_mot(tmp_path / "det.txt", _scene())
    out = _cli(src, "-o", tmp_path / "tracks.txt", "--high", "1.5")
    assert out.returncode == 2 and "high_score" in out.stderr
    out = _cli(src, "-o", tmp_path / "tracks.txt", "--fps", "0")
    assert out.returncode == 2 and "--fps must be positive" in out.stderr
