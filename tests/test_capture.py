"""Frame sources, the URI factory and the capture thread, on real media made here with PyAV."""

from __future__ import annotations

import re
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from segengine.capture.base import Source, SourceStatus, SourceTimeout
from segengine.capture.factory import LoopingSource, open_source
from segengine.capture.images import ImageFolderSource
from segengine.capture.pyav import PyAVFileSource
from segengine.capture.synthetic import SyntheticSource
from segengine.capture.thread import CaptureThread
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

N, H, W, FPS = 48, 96, 160, 24
VFR_MS = [0, 40, 100, 120, 200, 210, 300, 333, 400, 480]  # irregular timestamps in milliseconds


def level(i: int) -> int:
    """Frame i is a flat grey of this level, so decode order can be checked after H.264."""
    return 20 + 4 * i


def encode(path: Path, images: list[np.ndarray], *, fps: int = FPS, pts_ms: list[int] | None = None,
           fmt: str | None = None) -> Path:
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def greys(n: int) -> list[np.ndarray]:
    return [np.full((H, W, 3), level(i), np.uint8) for i in range(n)]


def read_all(source: Source, timeout: float = 1.0) -> list[Frame]:
    frames = []
    while True:
        try:
            frames.append(source.read(timeout))
        except EndOfStream:
            return frames


def drain(capture: CaptureThread, timeout: float = 2.0) -> list[Frame]:
    frames = []
    while True:
        try:
            frames.append(capture.get(timeout))
        except EndOfStream:
            return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    with av.open(str(d / "audio.wav"), "w") as out:  # a valid media file with no video stream
        stream = out.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate = 8000
        out.mux(stream.encode(samples))
        out.mux(stream.encode())
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(8192))
    return {"mp4": encode(d / "cfr.mp4", greys(N)),
            "vfr": encode(d / "vfr.mp4", greys(len(VFR_MS)), pts_ms=VFR_MS),
            "h264": encode(d / "raw.h264", greys(N), fmt="h264"),  # elementary stream: no pts at all
            "wav": d / "audio.wav", "empty": d / "empty.mp4", "random": d / "random.mp4"}


# --- files ---------------------------------------------------------------------------------

def test_file_reads_every_frame_in_order_with_container_pts(media: dict[str, Path]) -> None:
    src = PyAVFileSource(media["mp4"])
    assert isinstance(src, Source) and src.info.size is None  # nothing probed before open()
    src.open()
    assert src.info == SourceInfo(name=str(media["mp4"]), live=False, size=(H, W), fps=Fraction(FPS),
                                  frame_count=N, time_base=src.info.time_base)
    frames = read_all(src)
    assert [f.index for f in frames] == list(range(N))
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    assert np.allclose([f.pts for f in frames], np.arange(N) / FPS, atol=1e-6)
    assert np.allclose([f.image.mean() for f in frames], [level(i) for i in range(N)], atol=3)
    assert all(f.captured_at > 0 for f in frames)
    with pytest.raises(EndOfStream):  # the end stays the end
        src.read(1.0)
    src.close()
    src.close()  # idempotent
    with pytest.raises(SourceError, match="closed"):
        src.read(1.0)


def test_variable_frame_rate_pts_come_from_the_container(media: dict[str, Path]) -> None:
    src = PyAVFileSource(media["vfr"])
    src.open()
    assert np.allclose([f.pts for f in read_all(src)], np.array(VFR_MS) / 1000, atol=1e-6)


def test_stream_without_pts_continues_the_clock(media: dict[str, Path]) -> None:
    src = PyAVFileSource(media["h264"])
    src.open()
    assert src.info.frame_count is None  # a raw stream does not know its length
    pts = np.array([f.pts for f in read_all(src)])
    assert len(pts) == N and np.all(np.diff(pts) > 0)
    assert np.allclose(pts, np.arange(N) / FPS, atol=1e-6)  # the codec's 24 fps, not the 25 default


def test_shared_real_video(shared: Path) -> None:
    path = shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"
    with CaptureThread(open_source(str(path)), queue_size=8) as capture:
        frames = drain(capture)
        assert capture.dropped == 0 and capture.frames_read == 221
    assert len(frames) == 221 and {f.image.shape for f in frames} == {(540, 960, 3)}
    pts = np.array([f.pts for f in frames])
    assert np.all(np.diff(pts) > 0) and np.allclose(pts, np.arange(221) / 25, atol=1e-6)


@pytest.mark.parametrize(("key", "error", "words"), [
    ("missing", SourceError, "not found"),
    ("empty", SourceError, "empty (0 bytes)"),
    ("random", SourceError, "not a media file"),
    ("wav", ConfigError, "no video stream (streams: audio)"),
])
def test_file_errors_name_the_file(media: dict[str, Path], key: str, error: type, words: str) -> None:
    path = media.get(key, media["mp4"].with_name("nope.mp4"))
    src = PyAVFileSource(path)
    with pytest.raises(error, match=re.escape(words)) as info:
        src.open()
    assert str(path) in str(info.value)
    src.close()


# --- image folders -------------------------------------------------------------------------

def write_rgb(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for n in (10, 2, 1):  # natural order is 1, 2, 10 (plain sorting gives 1, 10, 2)
        write_rgb(tmp_path / f"frame_{n}.png", np.full((8, 12, 3), (n, 100, 200), np.uint8))
    write_rgb(tmp_path / "frame_5.bmp", np.full((8, 12, 3), (5, 100, 200), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_natural_order_rgb_and_pts(folder: Path) -> None:
    src = ImageFolderSource(folder, fps=10)
    src.open()
    assert src.info.frame_count == 4 and src.info.size == (8, 12) and src.info.fps == 10
    frames = read_all(src)
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 5, 10]
    assert tuple(frames[0].image[0, 0]) == (1, 100, 200)  # RGB, not OpenCV's BGR
    assert np.allclose([f.pts for f in frames], [0, 0.1, 0.2, 0.3])
    src.close()
    src.close()


def test_image_glob_selects_and_orders(folder: Path) -> None:
    src = ImageFolderSource(str(folder / "frame_*.png"))
    src.open()
    assert [int(f.image[0, 0, 0]) for f in read_all(src)] == [1, 2, 10]


def test_image_size_mismatch_names_file_and_sizes(folder: Path) -> None:
    write_rgb(folder / "frame_3.png", np.zeros((9, 12, 3), np.uint8))
    src = ImageFolderSource(folder)
    src.open()
    src.read(1.0), src.read(1.0)
    with pytest.raises(ConfigError, match=r"frame_3\.png is 12×9 but .*frame_1\.png is 12×8"):
        src.read(1.0)


def test_unreadable_image_and_empty_folder(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    (folder / "frame_0.png").write_bytes(b"garbage")
    with pytest.raises(SourceError, match=r"cannot read image .*frame_0\.png"):
        ImageFolderSource(folder).open()
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(SourceError, match="no images in folder"):
        ImageFolderSource(empty).open()


# --- synthetic -----------------------------------------------------------------------------

def test_synthetic_is_deterministic_with_ground_truth_boxes() -> None:
    a, b, other = SyntheticSource(frames=20), SyntheticSource(frames=20), SyntheticSource(frames=20, seed=1)
    for s in (a, b, other):
        s.open()
    fa, fb = read_all(a), read_all(b)
    assert len(fa) == 20 and all(np.array_equal(x.image, y.image) for x, y in zip(fa, fb))
    assert not np.array_equal(fa[0].image, other.read(1.0).image)
    assert [f.pts for f in fa] == [i / 25 for i in range(20)]
    boxes = np.stack([a.boxes(i) for i in range(20)])  # (frames, objects, 4)
    assert boxes.shape == (20, 3, 4) and boxes.dtype == np.float32
    # fully in view for the whole run, same size throughout, constant velocity (±1 px rounding)
    assert (boxes[..., 0] > 0).all() and (boxes[..., 2] < 640).all() and (boxes[..., 3] <= 360).all()
    assert np.ptp(boxes[..., 2] - boxes[..., 0], axis=0).max() == 0
    assert np.ptp(np.diff(boxes[..., 0], axis=0), axis=0).max() <= 1
    for obj, (x1, y1, x2, y2) in zip(a.objects, a.boxes(7).astype(int)):
        assert (fa[7].image[y1:y2, x1:x2] == obj.colour).all()


def test_synthetic_colours_survive_h264(tmp_path: Path) -> None:
    src = SyntheticSource(width=320, height=192, frames=12)
    src.open()
    path = encode(tmp_path / "synthetic.mp4", [f.image for f in read_all(src)], fps=25)
    decoded = PyAVFileSource(path)
    decoded.open()
    for frame in read_all(decoded):
        for obj, (x1, y1, x2, y2) in zip(src.objects, src.boxes(frame.index).astype(int)):
            inner = frame.image[y1 + 3:y2 - 3, x1 + 3:x2 - 3].reshape(-1, 3).astype(int)
            assert np.abs(inner.mean(0) - obj.colour).max() < 12


def test_synthetic_live_paces_times_out_and_close_unblocks() -> None:
    src = SyntheticSource(width=32, height=32, fps=2, frames=None, live=True)
    src.open()
    assert src.read(0.5).index == 0  # frame 0 is due at once, frame 1 after 500 ms
    start = time.monotonic()
    with pytest.raises(SourceTimeout):
        src.read(0.02)
    threading.Timer(0.05, src.close).start()
    with pytest.raises(SourceError, match="closed"):
        src.read(5.0)  # close() from another thread wakes a paced read
    assert time.monotonic() - start < 0.4


# --- factory -------------------------------------------------------------------------------

def test_factory_forms(media: dict[str, Path], folder: Path) -> None:
    synth = open_source("synthetic://?width=64&height=48&fps=10&frames=3")
    assert isinstance(synth, SyntheticSource) and synth.info.size == (48, 64) and synth.info.fps == 10
    looped = open_source(str(media["mp4"]), loop=True)
    assert all(isinstance(s, Source) for s in (synth, open_source(str(folder)), looped))
    with pytest.raises(SourceError, match=r"empty \(0 bytes\): .*empty\.mp4"):  # reported by the factory
        open_source(str(media["empty"]))
    assert open_source("synthetic://").info.frame_count == 100
    assert open_source("synthetic://?frames=none&live=1").info.live
    assert isinstance(open_source(str(folder)), ImageFolderSource)
    assert isinstance(open_source(str(folder / "*.png")), ImageFolderSource)
    for uri in (str(media["mp4"]), f"file://{media['mp4']}"):
        src = open_source(uri)
        assert isinstance(src, PyAVFileSource)
        with pytest.raises(SourceError, match="open()"):  # the factory builds, it does not open
            src.read(1.0)


@pytest.mark.parametrize(("uri", "error", "words"), [
    ("foo://bar", ConfigError, r"unsupported source scheme foo://.*synthetic://"),
    ("", ConfigError, "empty source"),
    ("/no/such/video.mp4", SourceError, r"not found: /no/such/video\.mp4 is no existing file or folder"),
    ("file:///no/such/video.mp4", SourceError, r"not found: /no/such/video\.mp4"),
    ("/no/such/*.png", SourceError, r"no images in glob pattern '/no/such/\*\.png'"),
    ("synthetic://?width=abc", ConfigError, "width='abc' is not an integer"),
    ("synthetic://?colour=red", ConfigError, "does not know colour"),
    ("synthetic://?fps=nan", ConfigError, "fps must be a positive number"),
    ("synthetic://?live=maybe", ConfigError, r"live='maybe' is not 0/1/true/false"),
])
def test_factory_errors(uri: str, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        open_source(uri)


def test_factory_loop_keeps_index_and_pts_increasing() -> None:
    with pytest.raises(ConfigError, match="loop=True needs a finite, non-live source"):
        open_source("synthetic://?live=1", loop=True)
    src = open_source("synthetic://?width=32&height=32&fps=10&frames=3", loop=True)
    assert isinstance(src, LoopingSource)
    src.open()
    frames = [src.read(1.0) for _ in range(7)]
    assert [f.index for f in frames] == list(range(7))
    assert np.allclose([f.pts for f in frames], np.arange(7) / 10)
    assert np.array_equal(frames[3].image, frames[0].image)
    src.close()


# --- capture thread ------------------------------------------------------------------------

def test_lossless_slow_consumer_loses_nothing() -> None:
    with CaptureThread(SyntheticSource(width=32, height=32, frames=30), queue_size=2) as capture:
        assert capture.policy == "lossless"
        frames = []
        for _ in range(30):
            frames.append(capture.get(1.0))
            time.sleep(0.003)
        for _ in range(2):  # the end stays the end
            with pytest.raises(EndOfStream):
                capture.get(1.0)
    assert [f.index for f in frames] == list(range(30))
    assert capture.dropped == 0 and capture.frames_read == 30


def test_latest_slow_consumer_drops_oldest_and_keeps_newest() -> None:
    source = SyntheticSource(width=32, height=32, fps=500, frames=60, live=True)
    with CaptureThread(source, queue_size=2) as capture:
        assert capture.policy == "latest"
        frames = []
        with pytest.raises(EndOfStream):
            while True:
                frames.append(capture.get(1.0))
                time.sleep(0.02)
    indices = [f.index for f in frames]
    assert capture.dropped > 0 and capture.frames_read == 60
    assert len(indices) + capture.dropped == 60  # every frame was either delivered or counted
    assert indices == sorted(indices) and indices[-2:] == [58, 59]  # order kept, newest kept


@pytest.mark.parametrize("make", [
    lambda media: SyntheticSource(width=32, height=32, frames=None),
    lambda media: PyAVFileSource(media["mp4"]),
])
def test_stop_while_producer_blocked_on_full_queue(media: dict[str, Path], make) -> None:
    capture = CaptureThread(make(media), queue_size=2).start()
    deadline = time.monotonic() + 2
    while capture.frames_read < 3 and time.monotonic() < deadline:  # 2 queued + 1 waiting
        time.sleep(0.005)
    assert capture.frames_read == 3 and capture.is_alive()
    start = time.monotonic()
    assert capture.stop() is True
    assert time.monotonic() - start < 1.0
    assert len(drain(capture)) == 2  # what was queued is still handed out, then the end


class Faulty:
    """Reads ``good`` frames, then raises ``error`` (from open() when good is None)."""

    def __init__(self, error: BaseException, good: int | None = 3) -> None:
        self.error, self.good, self.closed = error, good, threading.Event()
        self.info = SourceInfo(name="faulty", live=False)
        self._inner = SyntheticSource(width=32, height=32, frames=None)

    @property
    def status(self) -> SourceStatus:
        return self._inner.status

    def open(self) -> None:
        if self.good is None:
            raise self.error
        self._inner.open()

    def read(self, timeout: float) -> Frame:
        frame = self._inner.read(timeout)
        if frame.index >= self.good:
            raise self.error
        return frame

    def close(self) -> None:
        self.closed.set()


@pytest.mark.parametrize("good", [3, None])
def test_source_exception_is_reraised_by_get(good: int | None) -> None:
    error = SourceError("camera unplugged")
    source = Faulty(error, good)
    with CaptureThread(source) as capture:
        assert [capture.get(1.0).index for _ in range(good or 0)] == list(range(good or 0))
        for _ in range(2):
            with pytest.raises(SourceError) as info:
                capture.get(1.0)
            assert info.value is error
    assert source.closed.is_set()


def test_unreadable_file_error_reaches_the_consumer(media: dict[str, Path]) -> None:
    with CaptureThread(PyAVFileSource(media["random"])) as capture, \
            pytest.raises(SourceError, match="not a media file"):
        capture.get(1.0)


def test_get_times_out_when_nothing_arrives() -> None:
    source = SyntheticSource(width=32, height=32, fps=1, frames=None, live=True)
    capture = CaptureThread(source, read_timeout=0.05)
    with pytest.raises(SourceError, match="before start"):
        capture.get(0.1)
    with capture:
        capture.get(1.0)  # frame 0 is immediate; frame 1 is a second away
        start = time.monotonic()
        with pytest.raises(SourceTimeout):
            capture.get(0.1)
        assert 0.09 < time.monotonic() - start < 0.5
    assert not capture.is_alive()
