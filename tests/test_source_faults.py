"""Bad files: each fault a user meets gets a clear error or loses only what is broken.

Every test medium is made here with PyAV (and a few bytes patched by hand), never committed.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from segengine.capture.base import Source
from segengine.capture.factory import open_source
from segengine.capture.pyav import PyAVFileSource, sane_fps
from segengine.capture.thread import CaptureThread
from segengine.errors import EndOfStream, SourceError
from segengine.types import Frame

N, H, W = 48, 96, 160


def write(path: Path, images: list[np.ndarray], *, codec: str = "libx264", pix_fmt: str = "yuv420p", fps: int = 24,
          rotation: int | None = None, container_options: dict[str, str] | None = None,
          pts: list[int] | None = None, time_base: Fraction | None = None) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = stream.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def noise(n: int = N, h: int = H, w: int = W, seed: int = 0) -> list[np.ndarray]:
    """Incompressible frames: every frame costs kilobytes, so cuts and corruption land inside frames."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def levels(n: int = N, h: int = H, w: int = W) -> list[np.ndarray]:
    """Flat greys 20, 24, 28, ...: frame order and 8-bit levels can be checked after any codec."""
    return [np.full((h, w, 3), 20 + 4 * i, np.uint8) for i in range(n)]


def read_all(source: Source) -> list[Frame]:
    source.open()
    frames = []
    try:
        while True:
            frames.append(source.read(1.0))
    except EndOfStream:
        return frames
    finally:
        source.close()


def test_truncated_mp4_without_its_index_is_named_as_such(tmp_path: Path) -> None:
    whole = write(tmp_path / "whole.mp4", noise()).read_bytes()  # moov written last, as recorders do
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(SourceError, match=r"cut\.mp4 is a truncated MP4/MOV: its index \(the 'moov' box\) is "
                                          r"missing") as info:
        open_source(str(cut)).open()
    assert "faststart" in str(info.value)  # and how recorders avoid it


def test_truncated_faststart_mp4_gives_the_frames_before_the_cut_then_partial(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = write(tmp_path / "fast.mp4", noise(), container_options={"movflags": "+faststart"}).read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(whole[:len(whole) // 2])
    source = PyAVFileSource(cut)
    with caplog.at_level(logging.WARNING, logger="segengine.capture"):
        frames = read_all(source)
    assert 15 <= len(frames) <= 30  # about half the frames, in order, then a clean end
    assert [f.index for f in frames] == list(range(len(frames)))
    assert source.status.partial is not None and f"of {N} frames" in source.status.partial
    assert source.status.damaged and source.status.state == "ended" and source.status.frames == len(frames)
    assert any("partial" in r.getMessage() for r in caplog.records)


def _corrupt(data: bytes, at: list[float], length: int = 200) -> bytes:
    """Overwrite ``length`` bytes at each fraction of the media data with random bytes."""
    out = bytearray(data)
    start = out.find(b"mdat") + 8
    rng = np.random.default_rng(1)
    for fraction in at:
        offset = start + int((len(out) - start) * fraction)
        out[offset:offset + length] = rng.bytes(length)
    return bytes(out)


def test_corrupt_bytes_mid_stream_skip_frames_with_rate_limited_warnings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clean = write(tmp_path / "clean.mp4", noise())
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(_corrupt(clean.read_bytes(), [0.1, 0.3, 0.5, 0.7]))
    source = PyAVFileSource(bad)
    with caplog.at_level(logging.WARNING, logger="segengine.capture"):
        frames = read_all(source)
    skipped = source.status.skipped
    assert skipped >= 2 and len(frames) + skipped >= N - 1  # only the broken frames are left out
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))  # the survivors keep their own, increasing times
    warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert 1 <= len(warnings) < skipped  # rate-limited: not one line per broken frame
    assert "bad.mp4" in warnings[0].getMessage()


def test_unsupported_codec_is_refused_with_the_fix(tmp_path: Path) -> None:
    avi = write(tmp_path / "mjpeg.avi", noise(4), codec="mjpeg", pix_fmt="yuvj420p")
    unknown = tmp_path / "unknown.avi"
    unknown.write_bytes(avi.read_bytes().replace(b"MJPG", b"ZZZZ"))  # a fourcc no decoder claims
    with pytest.raises(SourceError, match=r"unknown\.avi: unsupported codec.*-c:v libx264"):
        open_source(str(unknown)).open()


def test_odd_width_and_height_are_read_at_their_size(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.mkv", levels(6, 97, 161), pix_fmt="yuv444p")  # 4:4:4 allows odd sizes
    frames = read_all(PyAVFileSource(path))
    assert len(frames) == 6 and {f.image.shape for f in frames} == {(97, 161, 3)}
    assert np.allclose([f.image.mean() for f in frames], [20 + 4 * i for i in range(6)], atol=2)


def test_ten_bit_hevc_is_converted_to_8_bit(tmp_path: Path) -> None:
    path = write(tmp_path / "hevc10.mp4", levels(8), codec="libx265", pix_fmt="yuv420p10le")
    source = PyAVFileSource(path)
    frames = read_all(source)
    assert len(frames) == 8 and all(f.image.dtype == np.uint8 for f in frames)
    assert np.allclose([f.image.mean() for f in frames], [20 + 4 * i for i in range(8)], atol=2)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_gives_upright_frames(tmp_path: Path, rotation: int) -> None:
    upright = np.zeros((H, W, 3), np.uint8)
    upright[:24, :40] = (230, 40, 40)  # a red block at the top left of what the viewer sees
    turns = round(rotation / 90) % 4
    stored = np.ascontiguousarray(np.rot90(upright, -turns))  # what a phone writes: sensor orientation
    source = open_source(str(write(tmp_path / "rot.mp4", [stored] * 3, pix_fmt="yuv444p", rotation=rotation)))
    frames = read_all(source)
    assert source.info.size == (H, W)  # the size is the upright one, known at open()
    for frame in frames:
        assert frame.image.shape == (H, W, 3)
        assert np.abs(frame.image[4:20, 4:36].astype(int) - (230, 40, 40)).max() < 12
        assert frame.image[H - 20:, W - 40:].max() < 12  # nothing where the block would be unrotated


def test_tiny_file_declaring_a_huge_frame_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.y4m"  # a 60-byte header that promises 16000×16000 frames
    path.write_bytes(b"YUV4MPEG2 W16000 H16000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1000))
    with pytest.raises(SourceError, match=r"huge\.y4m declares a 16000×16000 frame \(256 MP\), above the 67 MP "
                                          r"limit: refused before decoding"):
        open_source(str(path)).open()


def test_absurd_frame_rates_are_ignored_and_timestamps_stay_real(tmp_path: Path) -> None:
    assert [sane_fps(r) for r in (90000, Fraction(1, 1000), 0, None, "x")] == [None] * 5
    assert sane_fps(Fraction(30000, 1001)) == Fraction(30000, 1001)
    ticks = [0, 1, 2, 9000, 18000]  # frames 1/90000 s apart, then 0.1 s apart: the stream claims 90000 fps
    path = write(tmp_path / "absurd.mp4", levels(5), pix_fmt="yuv444p", pts=ticks, time_base=Fraction(1, 90000))
    with av.open(str(path)) as container:
        assert container.streams.video[0].guessed_rate == 90000
    source = PyAVFileSource(path)
    frames = read_all(source)
    assert source.info.fps is not None and source.info.fps < 1000  # the plausible average, not 90000
    assert np.allclose([f.pts for f in frames], np.array(ticks) / 90000)  # the container's own times


def test_random_bytes_and_empty_files_through_the_capture_thread(tmp_path: Path) -> None:
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with CaptureThread(PyAVFileSource(tmp_path / "random.mp4")) as capture, \
            pytest.raises(SourceError, match=re.escape("not a media file")):
        capture.get(2.0)
    (tmp_path / "empty.mkv").write_bytes(b"")
    with pytest.raises(SourceError, match=re.escape("empty (0 bytes)")):
        open_source(str(tmp_path / "empty.mkv"))
