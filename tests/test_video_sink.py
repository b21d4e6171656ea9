"""VideoSink keeps what it wrote: fragments on disk as it goes (a SIGKILL leaves a file that plays),
a failed write said on the frame it happened with the frames the left file really holds, the free
space watched, an ordinary MP4 at a clean end, and frames of another size letterboxed."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from segengine.errors import SinkError
from segengine.sinks import fragments, remux
from segengine.sinks.fragments import playable_prefix
from segengine.sinks.video import VideoSink
from segengine.types import Frame, FrameResult, SourceInfo

FPS = 25
INFO = SourceInfo("test", False, (96, 160), Fraction(FPS), None, Fraction(1, 12800))
START = 0.5  # a first pts > 0: the fragmented file's edit list must place it exactly
# x264's delay between a frame going in and its packet coming out (rc-lookahead 10, B-frames, one
# thread: the tests that bound it ask for one, as on 2 cores; each more frame thread adds a frame),
# and a fragment's frames: how far the frame a failure is said at can be past the last frame on disk.
DELAY, FRAGMENT = 20, FPS


def _pts(i: int) -> float:
    return START + i / FPS


def _image(i: int, size: tuple[int, int] = (96, 160), noise: int = 48) -> np.ndarray:
    """A flat frame (its colour changes each frame) with a patch of noise: about noise² bytes a frame."""
    h, w = size
    img = np.full((h, w, 3), (i * 5) % 256, np.uint8)
    img[: min(noise, h), : min(noise, w)] = np.random.default_rng(i).integers(0, 256, (min(noise, h), min(noise, w), 3))
    return img


def _result(i: int, size: tuple[int, int] = (96, 160), noise: int = 48) -> FrameResult:
    return FrameResult(Frame(_image(i, size, noise), i, _pts(i)))


def _decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(c.streams.video[0]))


def _times(path: Path) -> list[Fraction]:
    return [f.pts * f.time_base for f in _decode(path)]


def _expected(n: int, time_base: Fraction = Fraction(1, 12800)) -> list[Fraction]:
    return [Fraction(round(_pts(i) / time_base)) * time_base for i in range(n)]


def _partials(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.partial.*"))


# --- a clean end ------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_clean_close_commits_an_ordinary_file_with_every_frame(suffix: str, tmp_path: Path) -> None:
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"an older run")
    sink = VideoSink(out, INFO)
    for i in range(70):
        sink.write(_result(i))
        assert out.read_bytes() == b"an older run"  # the target is touched only at the end
    sink.close()
    assert (sink.frames_written, sink.frames_in_file, sink.output, sink.fragmented) == (70, 70, out, False)
    assert _partials(tmp_path) == []
    time_base = Fraction(1, 1000) if suffix == ".mkv" else Fraction(1, 12800)  # Matroska rounds to 1 ms
    assert _times(out) == _expected(70, time_base)
    data = out.read_bytes()
    if suffix != ".mkv":  # an ordinary MP4/MOV: index at the front, no fragments left
        assert data[4:8] == b"ftyp" and data[24:48].find(b"moov") >= 0 and b"moof" not in data
    else:  # the header patched at the end (written through FragmentFile's seeks): duration and Cues
        with av.open(str(out)) as c:
            assert c.duration == round((START + 70 / FPS) * 1e6)
        assert bytes.fromhex("1C53BB6B") in data


def test_counts_only_frames_whose_packets_are_on_disk(tmp_path: Path) -> None:
    """``frames_in_file`` is exactly what a copy of the file decodes at that moment, B-frames and
    x264's delay included: not the frames given to the encoder."""
    for suffix in (".mp4", ".mkv"):
        sink = VideoSink(tmp_path / f"count{suffix}", INFO)
        seen = []
        for i in range(90):
            before = sink.frames_in_file
            sink.write(_result(i))
            if sink.frames_in_file != before:
                copy = tmp_path / f"copy{suffix}"
                shutil.copyfile(sink.partial, copy)
                seen.append((sink.frames_in_file, len(_decode(copy))))
        assert sink.frames_written == 90 and 0 < sink.frames_in_file < 90 - DELAY // 2
        sink.close()
        assert len(seen) >= 2 and all(counted == decoded for counted, decoded in seen), seen


# --- SIGKILL ----------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time
    from tests.test_video_sink import INFO, _result
    from segengine.sinks.video import VideoSink
    sink = VideoSink(sys.argv[1], INFO)
    for i in range(3000):
        sink.write(_result(i))
        if sink.frames_in_file >= 2 * 25:
            print(sink.frames_in_file, flush=True)
            time.sleep(0.005)  # still writing when the parent kills it
""")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_sigkill_leaves_a_file_that_plays_to_its_last_fragment(suffix: str, tmp_path: Path) -> None:
    out = tmp_path / f"killed{suffix}"
    out.write_bytes(b"an older run")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        on_disk = int(line)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"an older run"
    (left,) = _partials(tmp_path)
    time_base = Fraction(1, 1000) if suffix == ".mkv" else Fraction(1, 12800)
    times = _times(left)
    assert len(times) >= on_disk > 0
    assert times == _expected(len(times), time_base)


# --- a full disk ------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A real small filesystem (tmpfs of the given size), unmounted afterwards; needs root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(sink: VideoSink, frames: int = 5000, noise: int = 48) -> tuple[int, SinkError]:
    """Write until the sink refuses: (index of the frame whose write raised, the error)."""
    for i in range(frames):
        try:
            sink.write(_result(i, noise=noise))
        except SinkError as exc:
            return i, exc
    raise AssertionError("the disk never filled")


_HOLDS = re.compile(r"at frame (\d+); (\S+) holds frames 0\.\.(\d+) \(playable\)")


def _check_left(folder: Path, sink: VideoSink, failed_at: int, error: SinkError) -> None:
    """The error names the frame it happened at and what the left file holds, and the file does."""
    match = _HOLDS.search(str(error))
    assert match, error
    assert int(match[1]) == failed_at
    left = Path(match[2])
    assert left == sink.output == sink.partial and left.parent == folder
    last = int(match[3])
    assert last + 1 == sink.frames_in_file
    assert failed_at - FRAGMENT - DELAY <= last < failed_at  # data reaches the disk a fragment at a time
    assert _times(left) == _expected(last + 1)  # it plays, with exactly the frames it claims
    assert os.listdir(folder) == [left.name]  # nothing else: no target, no broken copy


def test_full_disk_is_said_at_the_frame_it_happens_and_the_file_plays(small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("512k")
    sink = VideoSink(disk / "out.mp4", INFO, min_free=0, threads=1)
    failed_at, error = _fill(sink)
    assert "the disk is full at frame" in str(error)
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    _check_left(disk, sink, failed_at, error)
    # Cut back to its last complete fragment (here the disk may be full of whole fragments: they play).
    assert sink.output is not None and sink.output.stat().st_size == playable_prefix(sink.output, "mp4")[0]
    sink.close()  # after the failure: nothing more to do, nothing raised
    with pytest.raises(SinkError, match="closed"):
        sink.write(_result(failed_at + 1))


def test_full_disk_before_any_fragment_leaves_no_file(small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("96k")
    sink = VideoSink(disk / "out.mkv", INFO, min_free=0)
    failed_at, error = _fill(sink, noise=96)
    assert f"the disk is full at frame {failed_at}; no frame had reached the disk, so no file is left" in str(error)
    assert sink.output is None and os.listdir(disk) == []


def test_low_free_space_stops_with_a_finished_file(small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("3m")
    sink = VideoSink(disk / "out.mp4", INFO, min_free=2 << 20)
    stopped_at, error = _fill(sink)
    assert re.search(rf"only [\d.]+ MiB left on the disk of {re.escape(str(disk))} at frame {stopped_at}, "
                     r"below the 2\.0 MiB kept free \(min_free\): stopped; ", str(error)), error
    assert error.__cause__ is None  # no write failed: the watch stopped it first
    # Finished, not cut: every frame given is in it, index included.
    assert f"holds frames 0..{stopped_at} (playable)" in str(error)
    assert sink.frames_in_file == sink.frames_written == stopped_at + 1
    assert sink.output is not None and _times(sink.output) == _expected(stopped_at + 1)
    assert os.listdir(disk) == [sink.output.name] and not (disk / "out.mp4").exists()


def test_too_little_free_space_refuses_to_start(small_disk: Callable[[str], Path]) -> None:
    disk = small_disk("3m")
    with pytest.raises(SinkError, match=rf"only 3\.0 MiB free in {re.escape(str(disk))}, below the 64\.0 MiB"):
        VideoSink(disk / "out.mp4", INFO)
    assert os.listdir(disk) == []


def test_no_room_for_the_faststart_copy_keeps_the_fragmented_file(small_disk: Callable[[str], Path],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    disk = small_disk("1m")
    sink = VideoSink(disk / "out.mp4", INFO, min_free=0)
    i = 0
    while sink.frames_in_file == 0 or sink.partial.stat().st_size < 600 << 10:
        sink.write(_result(i))
        i += 1
    with caplog.at_level(logging.WARNING, "segengine.sinks.video"):
        sink.close()
    assert sink.output == disk / "out.mp4" and sink.fragmented
    assert "kept as fragmented MP4" in caplog.text and "too little for the copy" in caplog.text
    assert _times(disk / "out.mp4") == _expected(i)
    assert os.listdir(disk) == ["out.mp4"]


def _failing_pwrite(monkeypatch: pytest.MonkeyPatch, budget: int) -> list[int]:
    """os.pwrite as on a disk with ``budget`` bytes left: a short write, then ENOSPC."""
    real = os.pwrite
    left = [budget]
    written_total = [0]

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real(fd, data[: left[0]], offset)
        left[0] -= written
        written_total[0] = max(written_total[0], offset + written)
        return written

    monkeypatch.setattr(fragments.os, "pwrite", pwrite)
    return written_total


def test_failed_write_without_a_small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as on a real full disk, where no filesystem can be mounted (not root)."""
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an older run")
    sink = VideoSink(out, INFO, min_free=0, threads=1)
    reached = _failing_pwrite(monkeypatch, 300_000)  # not a fragment boundary: a fragment half written
    failed_at, error = _fill(sink)
    monkeypatch.undo()
    assert out.read_bytes() == b"an older run"
    out.unlink()
    _check_left(tmp_path, sink, failed_at, error)
    assert reached[0] == 300_000 > sink.partial.stat().st_size  # the half fragment was cut off


def test_a_failed_faststart_copy_keeps_the_fragmented_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def remux_fails(src: Path, dst: Path, *args: object) -> int:
        dst.write_bytes(b"half a copy")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(remux, "remux_faststart", remux_fails)
    sink = VideoSink(tmp_path / "out.mp4", INFO)
    for i in range(40):
        sink.write(_result(i))
    with caplog.at_level(logging.WARNING, "segengine.sinks.video"):
        sink.close()
    assert sink.fragmented and "the copy failed" in caplog.text
    assert _times(tmp_path / "out.mp4") == _expected(40)
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_abort_finishes_the_file_under_its_partial_name(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "out.mkv", INFO)
    for i in range(30):
        sink.write(_result(i))
    sink.abort()
    sink.close()
    assert sink.output == sink.partial and not (tmp_path / "out.mkv").exists()
    assert sink.frames_in_file == 30 and len(_decode(sink.partial)) == 30


@pytest.mark.parametrize("layout", ["mp4", "mkv"])
def test_playable_prefix_cuts_a_fragment_left_half_written(layout: str, tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / f"whole.{layout}", INFO, fragment_seconds=0.5)
    for i in range(80):
        sink.write(_result(i))
    sink.abort()  # the fragmented file, as a killed run leaves it
    data = sink.partial.read_bytes()
    cut = tmp_path / f"cut.{layout}"
    cut.write_bytes(data[: len(data) * 2 // 3])  # a killed writer or a lost page cache: any prefix
    end, frames = playable_prefix(cut, layout)
    assert 0 < end < len(data) * 2 // 3 and frames > 0
    os.truncate(cut, end)
    assert len(_decode(cut)) == frames


# --- the source changes size ------------------------------------------------------------------

def test_frames_of_another_size_are_letterboxed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sizes = [(96, 160), (192, 320), (48, 80), (120, 120), (91, 161), (96, 160), (192, 320)]
    sink = VideoSink(tmp_path / "sizes.mp4", INFO)
    with caplog.at_level(logging.WARNING, "segengine.sinks.video"):
        for i, size in enumerate(sizes):
            image = np.zeros((*size, 3), np.uint8)
            image[:] = (200, 60, 30)
            sink.write(FrameResult(Frame(image, i, _pts(i))))
        sink.close()
    warned = [r.getMessage() for r in caplog.records if "changed size" in r.getMessage()]
    assert len(warned) == 4  # once for each new size, not for each frame
    assert "frame 1 is 320x192 but the video is 160x96" in warned[0]
    assert "scaled to 96x96 on black bars" in warned[2] and "scaled to 160x90" in warned[3]
    frames = [f.to_ndarray(format="rgb24").astype(int) for f in _decode(tmp_path / "sizes.mp4")]
    assert len(frames) == len(sizes) and {f.shape for f in frames} == {(96, 160, 3)}
    for k in (0, 1, 2, 5, 6):  # same aspect ratio: the whole picture
        np.testing.assert_allclose(frames[k][48, [5, 80, 154]], [(200, 60, 30)] * 3, atol=10)
    square = frames[3]  # 120x120 into 160x96: 96x96 in the middle, 32 black columns each side
    np.testing.assert_allclose(square[48, [10, 150]], [(0, 0, 0)] * 2, atol=10)
    np.testing.assert_allclose(square[[5, 48, 90], 80], [(200, 60, 30)] * 3, atol=10)
    odd = frames[4]  # 161x91 into 160x96: 160x90, three black rows above and below
    np.testing.assert_allclose(odd[[0, 95], 80], [(0, 0, 0)] * 2, atol=10)
    np.testing.assert_allclose(odd[[5, 90], 80], [(200, 60, 30)] * 2, atol=10)
