"""Sinks: MP4 with the input's frames and timestamps, JSON lines (schema 2) that round-trip, window,
images, and any sink on its own thread."""

from __future__ import annotations

import errno
import io
import os
import stat
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from segengine.errors import ConfigError, SinkError
from segengine.geometry import letterbox, stretch
from segengine.graph.readout import masks_to_frame
from segengine.layers import BinaryMap, Instances, LaneLines, SemanticMap, map_from_json
from segengine.rle import decode_mask
from segengine.sinks import window
from segengine.sinks.factory import open_sinks
from segengine.sinks.images import ImageFolderSink
from segengine.sinks.jsonl import JsonlSink, read_jsonl, to_record
from segengine.sinks.video import VideoSink
from segengine.types import Frame, FrameResult, SourceInfo, SourceStatus
from tests.factories import class_map, frame, result

CLASSES = ("person", "bicycle", "car")
# pycocotools' own decode trips numpy 2's copy=False deprecation inside its Cython; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _image(index: int, size: tuple[int, int]) -> np.ndarray:
    """Flat blocks whose colours survive compression, different on every frame."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 40, (index * 37) % 256)
    img[:, w // 2:] = (30, 180, 90)
    return img


def _instances(size: tuple[int, int], letterboxed: bool = True) -> Instances:
    """Two blobs on the prototype grid (input / 4), as the graph gives them; boxes from their frame masks."""
    placement = letterbox(size, long_side=128) if letterboxed else stretch(size, (96, 128))
    gh, gw = placement.input_size[0] // 4, placement.input_size[1] // 4
    yy, xx = np.mgrid[:gh, :gw]
    masks = np.stack([(((yy - gh * 0.5) / 5) ** 2 + ((xx - gw * 0.3) / 7) ** 2 < 1),
                      (((yy - gh * 0.6) / 4) ** 2 + ((xx - gw * 0.7) / 4) ** 2 < 1)]).astype(np.uint8) * 230
    boxes = []
    for m in masks_to_frame(masks, placement):
        ys, xs = np.nonzero(m)
        boxes.append([xs.min() + 0.123, ys.min() + 0.456, xs.max() + 1.0, ys.max() + 1.0])
    return Instances(np.array(boxes, np.float32), np.array([0.91, 0.55], np.float32), np.array([2, 0], np.int32),
                     masks, placement, CLASSES,
                     track_ids=np.array([7, -1]))


def _lanes(size: tuple[int, int], polylines: tuple[np.ndarray, ...] | None) -> LaneLines:
    """A lane map at half the (letterboxed) input's resolution, with marks in the padding that the
    frame does not show."""
    placement = letterbox(size, long_side=128)
    ih, iw = placement.input_size
    classes = np.zeros((ih // 2, iw // 2), np.uint8)
    cv2.line(classes, (iw // 8, ih // 2 - 6), (iw // 4, ih // 4), 1, 2)
    classes[:2] = 1  # in the padding above the frame
    return LaneLines(classes, placement, ("background", "lane"), polylines)


def _result(index: int, pts: float, size: tuple[int, int] = (90, 160), rendered: bool = False) -> FrameResult:
    image = _image(index, size)
    line = np.array([[10, size[0] - 1], [40.257, size[0] / 2]], np.float32)
    layers = {"drivable": class_map(BinaryMap, frame_size=size, grid=(size[0] // 2, size[1] // 2)),
              "lanes": _lanes(size, (line,)), "instances": _instances(size)}
    return FrameResult(Frame(image, index, pts), layers, timings={"infer": 0.0123456, "render": 0.002},
                       rendered=255 - image if rendered else None)


def _decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(c.streams.video[0]))


def _write_video(path: Path, pts: list[float], info: SourceInfo, size: tuple[int, int] = (90, 160)) -> VideoSink:
    sink = VideoSink(path, info)
    for i, t in enumerate(pts):
        sink.write(_result(i, t, size))
    sink.close()
    return sink


# --- video -------------------------------------------------------------------------------------

def test_video_25fps_keeps_frames_size_and_pts(tmp_path: Path) -> None:
    info = SourceInfo("test", False, (90, 160), Fraction(25), 30, Fraction(1, 12800))
    _write_video(tmp_path / "out.mp4", [i / 25 for i in range(30)], info)
    frames = _decode(tmp_path / "out.mp4")
    assert len(frames) == 30
    assert {(f.height, f.width) for f in frames} == {(90, 160)}
    assert [f.pts * f.time_base for f in frames] == [Fraction(i, 25) for i in range(30)]
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].format.name == "yuv420p"
        assert c.streams.video[0].average_rate == 25
    assert (tmp_path / "out.mp4").read_bytes()[24:40].find(b"moov") >= 0  # faststart: index up front
    # The picture is the frame's: colour blocks survive compression (RGB in, RGB out).
    np.testing.assert_allclose(frames[3].to_ndarray(format="rgb24")[45, 20], _image(3, (90, 160))[45, 20], atol=8)


def test_video_saturated_colours_survive_and_the_matrix_is_tagged(tmp_path: Path) -> None:
    # OpenCV converts with BT.601's matrix: the stream must say so, or a player reading it as BT.709
    # shifts saturated red by ~20 levels (measured: 230,20,20 decodes to 246,38,16).
    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (128, 128, 128), (250, 250, 250)]
    image = np.zeros((96, 160, 3), np.uint8)
    for k, colour in enumerate(colours):
        image[:, k * 26:(k + 1) * 26] = colour
    sink = VideoSink(tmp_path / "c.mp4", SourceInfo("c", False, (96, 160), Fraction(25)))
    for i in range(3):
        sink.write(FrameResult(Frame(image, i, i / 25)))
    sink.close()
    frame = _decode(tmp_path / "c.mp4")[0]
    assert (frame.colorspace, frame.color_range) == (6, 1)  # SMPTE 170M (BT.601) matrix, limited range
    decoded = frame.to_ndarray(format="rgb24")
    for k, colour in enumerate(colours):
        np.testing.assert_allclose(decoded[48, k * 26 + 13], colour, atol=4)


def test_video_variable_frame_rate_pts_are_exact(tmp_path: Path) -> None:
    ticks = np.cumsum(np.random.default_rng(1).integers(1000, 9000, 20)) - 1000  # irregular gaps, in 1/90000
    info = SourceInfo("vfr", False)  # no time base, size or fps known: 1/90000 is used
    sink = _write_video(tmp_path / "vfr.mp4", [t / 90000 for t in ticks], info)
    assert sink.pts_adjusted == 0
    assert [f.pts * f.time_base for f in _decode(tmp_path / "vfr.mp4")] == [Fraction(int(t), 90000) for t in ticks]


def test_video_pts_forced_strictly_increasing(tmp_path: Path) -> None:
    info = SourceInfo("dup", False, time_base=Fraction(1, 1000))
    sink = _write_video(tmp_path / "dup.mp4", [0.0, 0.04, 0.04, 0.03, 0.12], info)
    assert sink.pts_adjusted == 2
    assert [f.pts * f.time_base for f in _decode(tmp_path / "dup.mp4")] == \
        [Fraction(t, 1000) for t in (0, 40, 41, 42, 120)]


def test_video_odd_size_padded_by_one_pixel(tmp_path: Path) -> None:
    # H.264 4:2:0 cannot crop by one pixel (x264: "crop-rect 0,0,1,1 not divisible by 2x2"), so
    # 161×91 becomes 162×92 with the last column and row repeated.
    sink = _write_video(tmp_path / "odd.mp4", [i / 30 for i in range(5)], SourceInfo("odd", False), (91, 161))
    assert sink.padded
    frames = _decode(tmp_path / "odd.mp4")
    assert len(frames) == 5 and {(f.height, f.width) for f in frames} == {(92, 162)}
    img = frames[2].to_ndarray(format="rgb24").astype(int)
    np.testing.assert_allclose(img[:91, 150], _image(2, (91, 161))[:, 150], atol=8)
    np.testing.assert_allclose(img[91], img[90], atol=8)  # repeated edge, not a black line
    np.testing.assert_allclose(img[:, 161], img[:, 160], atol=8)


def test_video_close_is_idempotent_and_final(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "c.mp4", SourceInfo("c", False, (90, 160), Fraction(30)))
    sink.write(_result(0, 0.0, rendered=True))
    sink.close()
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write(_result(1, 0.1))
    (frame,) = _decode(tmp_path / "c.mp4")
    np.testing.assert_allclose(frame.to_ndarray(format="rgb24")[45, 120], 255 - _image(0, (90, 160))[45, 120], atol=8)


def test_video_bad_paths_fail_before_any_frame(tmp_path: Path) -> None:
    info = SourceInfo("bad", False)
    with pytest.raises(SinkError, match="does not exist") as exc:
        VideoSink(tmp_path / "missing" / "out.mp4", info)
    assert isinstance(exc.value, OSError)
    with pytest.raises(SinkError, match="is a folder"):
        VideoSink(tmp_path, info)
    with pytest.raises(SinkError, match="unknown container"):
        VideoSink(tmp_path / "out.avi2", info)
    VideoSink(tmp_path / "empty.mp4", info).close()  # nothing written: no empty file left behind
    assert not (tmp_path / "empty.mp4").exists()


def test_video_refuses_a_device_or_pipe_and_leaves_it_alone(tmp_path: Path) -> None:
    # The video is renamed onto its target at the end: onto /dev/full or a pipe that would replace
    # the device with a file. (A full disk: tests/test_video_sink.py, on a real small filesystem.)
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)
    with pytest.raises(SinkError, match="not a regular file"):
        VideoSink(pipe, SourceInfo("pipe", False))
    assert stat.S_ISFIFO(pipe.stat().st_mode) and os.listdir(tmp_path) == ["pipe.mp4"]


def test_video_copies_real_timestamps(shared: Path, tmp_path: Path) -> None:
    src = shared / "data/videos/udacity_lanelines_solidWhiteRight.mp4"
    with av.open(str(src)) as c:
        s = c.streams.video[0]
        info = SourceInfo(src.name, False, (s.height, s.width), s.average_rate, s.frames, s.time_base)
        sink = VideoSink(tmp_path / "copy.mp4", info)
        pts = []
        for i, f in enumerate(c.decode(s)):
            pts.append(f.pts * f.time_base)
            sink.write(FrameResult(Frame(f.to_ndarray(format="rgb24"), i, float(pts[-1]))))
        sink.close()
    out = _decode(tmp_path / "copy.mp4")
    assert len(out) == 221 and {(f.width, f.height) for f in out} == {(960, 540)}
    assert [f.pts * f.time_base for f in out] == pts


# --- JSON lines --------------------------------------------------------------------------------

def test_jsonl_schema_round_trip_and_flush(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    unfitted = _result(1, 1 / 3)
    unfitted = unfitted.with_layer("lanes", _lanes((90, 160), None)).with_layer(
        "drivable", class_map(BinaryMap, frame_size=(90, 160), grid=(45, 80), fill={0: (slice(None), slice(None))}))
    status = SourceStatus("streaming", frames=3, dropped=1)
    bare = FrameResult(Frame(_image(2, (90, 160)), 2, 0.7), source=status)
    results = [_result(0, 0.0), unfitted, bare]
    for r in results:
        sink.write(r)
    assert not path.exists()  # written beside the target until close
    lines = sink.writing_to.read_text().splitlines(keepends=True)  # before close: every line already on disk
    assert len(lines) == 3 and all(line.endswith("\n") for line in lines)
    sink.close()
    sink.close()
    records = list(read_jsonl(path))
    assert list(tmp_path.iterdir()) == [path]
    assert all(r["schema"] == 2 for r in records)
    assert all(set(r) == {"schema", "frame", "pts", "stream", "size", "inferred", "layers", "timings_ms", "source"}
               for r in records)  # the old top-level "instances" and "lanes" are gone
    assert all(r["inferred"] is True for r in records)  # carried frames (--interval): tests/test_interval.py
    first, second, third = records
    assert first["frame"] == 0 and second["pts"] == pytest.approx(1 / 3) and first["stream"] == "0"
    assert first["size"] == [90, 160]
    assert first["timings_ms"] == {"infer": 12.346, "render": 2.0}
    layers = first["layers"]
    assert list(layers) == ["drivable", "lanes", "instances"]  # the result's order
    assert {n: v["kind"] for n, v in layers.items()} == {"drivable": "binary_map", "lanes": "lane_lines",
                                                         "instances": "instances"}
    assert layers["lanes"]["polylines"] == [[[10.0, 89.0], [40.26, 45.0]]]
    a, b = layers["instances"]["items"]
    assert (a["track_id"], a["class"], a["class_id"], a["score"]) == (7, "car", 2, 0.91)
    assert (b["track_id"], b["class"], b["class_id"]) == (None, "person", 0)
    assert a["box"] == [round(float(v), 2) for v in results[0].instances.boxes[0]]
    expected = results[0].instances.frame_masks()
    for inst, mask in zip(layers["instances"]["items"], expected):
        assert inst["mask"]["size"] == [90, 160] and isinstance(inst["mask"]["counts"], str)
        np.testing.assert_array_equal(decode_mask(inst["mask"]), mask)
    # Maps: RLE per class present at model resolution, and the placement that takes them back to the frame.
    drivable, lanes = results[0].drivable, results[0].lanes
    assert layers["drivable"]["classes"] == ["background", "drivable"] and set(layers["drivable"]["masks"]) == {
        "drivable"}
    assert layers["drivable"]["masks"]["drivable"]["size"] == [45, 80]
    assert layers["drivable"]["placement"] == drivable.placement.to_dict()
    assert layers["lanes"]["masks"]["lane"]["size"] == list(lanes.classes.shape)
    for layer, json_layer in ((drivable, layers["drivable"]), (lanes, layers["lanes"])):
        back = map_from_json(json_layer)
        assert back.shape == (90, 160) and back.dtype == np.uint8 and back.any()
        np.testing.assert_array_equal(back, layer.to_frame())
    # Lanes not fitted yet: null polylines, the map all the same; a map with nothing in it: no masks.
    assert second["layers"]["lanes"]["polylines"] is None
    np.testing.assert_array_equal(map_from_json(second["layers"]["lanes"]), unfitted.lanes.to_frame())
    assert second["layers"]["drivable"]["masks"] == {}
    assert (map_from_json(second["layers"]["drivable"]) == 0).all()
    assert map_from_json(second["layers"]["drivable"]).shape == (90, 160)
    assert first["source"] is None
    assert third["layers"] == {} and third["timings_ms"] == {}
    assert third["source"] == {"state": "streaming", "frames": 3, "dropped": 1, "skipped": 0, "reconnects": 0,
                               "gaps": 0, "partial": None}


@pytest.mark.parametrize("masks", ["instances", "none"])
def test_jsonl_writes_masks_only_where_asked(masks: str, tmp_path: Path) -> None:
    result = _result(0, 0.0)
    full = to_record(result)
    sink = JsonlSink(tmp_path / "m.jsonl", masks=masks)
    sink.write(result)
    sink.close()
    (record,) = read_jsonl(tmp_path / "m.jsonl")
    layers = record["layers"]
    for name in ("drivable", "lanes"):  # the maps: classes and placement, no RLE
        assert layers[name]["masks"] is None
        assert {k: v for k, v in layers[name].items() if k != "masks"} == {
            k: v for k, v in full["layers"][name].items() if k != "masks"}
        with pytest.raises(ConfigError, match="--json-masks all"):
            map_from_json(layers[name])
    items, want = layers["instances"]["items"], full["layers"]["instances"]["items"]
    assert [i["mask"] for i in items] == ([w["mask"] for w in want] if masks == "instances" else [None, None])
    assert [{k: v for k, v in i.items() if k != "mask"} for i in items] == [
        {k: v for k, v in w.items() if k != "mask"} for w in want]
    with pytest.raises(SinkError, match="choose one of all, instances, none"):
        JsonlSink(tmp_path / "x.jsonl", masks="some")


@pytest.mark.parametrize("names", [
    ("background", "road", "sidewalk"),
    ("road", "sidewalk", "background"),  # ESPNetv2's order: "background" is not class 0
])
def test_jsonl_semantic_map_round_trip(names: tuple[str, ...]) -> None:
    grid = (30, 40)
    ids = np.full(grid, names.index("background"), np.uint8)
    ids[15:, :] = names.index("road")
    ids[20:, 30:] = names.index("sidewalk")
    semantic = SemanticMap(ids, stretch((90, 160), grid), names)
    record = to_record(result({"semantic": semantic}, image=frame(90, 160)))
    assert record["schema"] == 2 and record["layers"]["semantic"]["kind"] == "semantic"
    assert "background" not in record["layers"]["semantic"]["masks"]
    np.testing.assert_array_equal(map_from_json(record["layers"]["semantic"]), semantic.to_frame())


def test_jsonl_streams_and_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.StringIO()
    JsonlSink(buffer).write(_result(0, 0.0))
    assert buffer.getvalue().count("\n") == 1
    sink = JsonlSink("-")
    sink.write(_result(4, 0.16))
    sink.close()
    assert '"frame":4' in capsys.readouterr().out


def test_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="does not exist"):
        JsonlSink(tmp_path / "nope" / "a.jsonl")
    sink = JsonlSink(tmp_path / "cut.jsonl")
    sink.write(_result(0, 0.0))

    class HalfThenFull:  # a disk that fills up in the middle of the second line
        def __init__(self, f: io.RawIOBase) -> None:
            self.f = f

        def write(self, data: memoryview) -> int:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

    sink._file = HalfThenFull(sink._file)
    with pytest.raises(SinkError, match="disk is full"):
        sink.write(_result(1, 0.1))
    sink.close()
    assert [r["frame"] for r in read_jsonl(tmp_path / "cut.jsonl")] == [0]  # the half line is gone


# --- window, images, factory -------------------------------------------------------------------

def test_window_headless_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")  # even with a display, a headless OpenCV cannot show windows
    monkeypatch.setattr(window, "_gui_backend", lambda: None)  # as opencv-python-headless reports it
    with pytest.raises(SinkError, match="opencv-python instead of opencv-python-headless"):
        window.WindowSink("test")


def test_window_without_a_display_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="no display"):
        window.WindowSink("test")


def test_window_q_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = []
    monkeypatch.setattr(window, "_gui_backend", lambda: "GTK3")
    monkeypatch.setattr(window, "_has_display", lambda: True)
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda title, img: shown.append(img))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: None)
    keys = iter([-1, ord("q")])
    monkeypatch.setattr(cv2, "waitKey", lambda ms: next(keys, -1))
    sink = window.WindowSink("test")
    sink.write(_result(0, 0.0))
    assert not sink.closed_by_user
    sink.write(_result(1, 0.04))
    assert sink.closed_by_user and len(shown) == 2
    np.testing.assert_array_equal(shown[0][..., ::-1], _image(0, (90, 160)))  # shown as BGR
    sink.close()
    sink.close()


def test_image_folder_writes_every_frame(tmp_path: Path) -> None:
    sink = ImageFolderSink(tmp_path / "a" / "frames")
    for i in range(4):
        sink.write(_result(i, i / 25))
    sink.close()
    names = sorted(p.name for p in (tmp_path / "a" / "frames").iterdir())
    assert names == [f"frame_{i:06d}.jpg" for i in range(4)]
    assert cv2.imread(str(tmp_path / "a" / "frames" / names[0])).shape == (90, 160, 3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkError, match="not a folder"):
        ImageFolderSink(tmp_path / "file")
    with pytest.raises(ConfigError, match="cannot write .xyz"):
        ImageFolderSink(tmp_path / "b", ext="xyz")


def test_open_sinks(tmp_path: Path) -> None:
    info = SourceInfo("clip", False, (90, 160), Fraction(25))
    sinks = open_sinks(tmp_path / "o.mp4", tmp_path / "o.jsonl", False, tmp_path / "imgs", info)
    assert [type(s).__name__ for s in sinks] == ["VideoSink", "ImageFolderSink", "JsonlSink"]
    for s in sinks:
        s.close()
    for bad, match in [(tmp_path / "out", "did you mean"), (tmp_path, "is a folder"),
                       (tmp_path / "x.png", "--images-out"), (tmp_path / "x.avi3", "not a video container")]:
        with pytest.raises(ConfigError, match=match):
            open_sinks(bad, None, False, None, info)
    with pytest.raises(ConfigError, match="same file"):
        open_sinks(tmp_path / "a.mp4", tmp_path / "a.mp4", False, None, info)
    with pytest.raises(ConfigError, match="does not exist"):  # found before any sink opens
        open_sinks(tmp_path / "w.mp4", tmp_path / "missing" / "w.jsonl", False, None, info)
    # A sink that fails to open aborts those opened before it: no stray empty video is left.
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(SinkError, match="folder"):
        open_sinks(tmp_path / "w.mp4", tmp_path / "dir.jsonl", False, None, info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.jsonl", "imgs", "o.jsonl"]  # an empty video is none
    with pytest.raises(SinkError, match="window"):  # headless here
        open_sinks(tmp_path / "w.mp4", None, True, None, info)
    assert not (tmp_path / "w.mp4").exists()
