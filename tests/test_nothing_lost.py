"""Nothing lost: no output replaces the input or an existing file unasked, a failed run leaves
its targets as they were (what it wrote is kept beside them), and exit codes say what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segengine.backends.memory import is_out_of_memory
from segengine.capture.synthetic import SyntheticSource
from segengine.errors import ConfigError, OutOfMemory, SinkError, SourceError
from segengine.pipeline import Pipeline
from segengine.sinks.jsonl import JsonlSink, read_jsonl
from segengine.sinks.outputs import check_outputs, input_paths
from segengine.sinks.staging import StagedFile, partial_of
from tests.factories import FakeBackend, result
from tests.filesystems import small_filesystem


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segengine.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# -- outputs checked before anything opens ---------------------------------------------------------

def test_an_output_that_is_the_input_is_refused_also_through_links(tmp_path: Path) -> None:
    video = tmp_path / "in.mp4"
    video.write_bytes(b"not really a video")
    (tmp_path / "link.mp4").symlink_to(video)
    os.link(video, tmp_path / "hard.mp4")
    for output in (video, tmp_path / "link.mp4", tmp_path / "hard.mp4"):
        with pytest.raises(ConfigError, match="is the input"):
            check_outputs({"--output": output}, input_paths(str(video)), overwrite=True)
    with pytest.raises(ConfigError, match="is the input"):  # the input named through the link
        check_outputs({"--json": video}, input_paths(str(tmp_path / "link.mp4")), overwrite=True)


def test_existing_outputs_are_refused_unless_overwrite(tmp_path: Path) -> None:
    existing = tmp_path / "out.jsonl"
    existing.write_text("{}\n")
    with pytest.raises(ConfigError, match="already exists: add --overwrite"):
        check_outputs({"--json": existing})
    check_outputs({"--json": existing}, overwrite=True)
    check_outputs({"--json": Path("-"), "--output": tmp_path / "new.mp4"})  # stdout and new files are fine
    with pytest.raises(ConfigError, match="does not exist"):
        check_outputs({"--json": tmp_path / "no" / "x.jsonl"})
    (tmp_path / "alias.jsonl").symlink_to(tmp_path / "target.jsonl")
    with pytest.raises(ConfigError, match="same file"):
        check_outputs({"--output": tmp_path / "target.jsonl", "--json": tmp_path / "alias.jsonl"}, overwrite=True)


def test_frames_are_never_written_into_the_image_folder_being_read(tmp_path: Path) -> None:
    images = tmp_path / "frames"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    for source in (str(images), str(images / "*.png"), str(images / "a.png")):
        with pytest.raises(ConfigError, match="where the input"):
            check_outputs({}, input_paths(source), folders={"--images-out": images})
    out = tmp_path / "out"
    out.mkdir()
    (out / "frame_000000.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds frame images"):
        check_outputs({}, input_paths(str(images)), folders={"--images-out": out})
    check_outputs({}, input_paths(str(images)), folders={"--images-out": out}, overwrite=True)


def test_cli_refuses_to_write_over_its_input_before_reading_it(tmp_path: Path) -> None:
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x" * 1000)
    (tmp_path / "link.mp4").symlink_to(video)
    for output in ("in.mp4", "link.mp4"):
        done = _cli("run", str(video), "-o", str(tmp_path / output), "--overwrite")
        assert done.returncode == 2 and "is the input" in done.stderr and "Traceback" not in done.stderr
    done = _cli("track", str(video), "-o", str(tmp_path / "link.mp4"), "--overwrite")
    assert done.returncode == 2 and "is the input" in done.stderr
    assert video.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "link.mp4"]


def test_classes_without_a_model_is_an_error(tmp_path: Path) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("car\n")
    done = _cli("run", "synthetic://?frames=2", "--classes", str(classes), "-q")
    assert done.returncode == 2 and "--classes" in done.stderr and "--model" in done.stderr


# -- staged outputs: replaced only by a run that finished -----------------------------------------

def test_export_refuses_an_existing_graph_and_a_failed_export_leaves_it_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segengine.cli import main
    from segengine.graph import compose

    old = tmp_path / "t.onnx"
    old.write_bytes(b"yesterday's graph")
    assert main(["export", "twinlitenet", "--raw", "-o", str(old)]) == 2  # exists, no --overwrite

    def fails(name: str, path: Path, dirs: object) -> Path:
        Path(path).write_bytes(b"half a graph")
        raise MemoryError("the exporter ran out of memory")

    monkeypatch.setattr(compose, "export_raw", fails)
    with pytest.raises(MemoryError):
        main(["export", "twinlitenet", "--raw", "-o", str(old), "--overwrite"])
    assert old.read_bytes() == b"yesterday's graph" and sorted(tmp_path.iterdir()) == [old]


def test_staged_file_is_private_to_nobody_and_commits_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    staged = StagedFile(target, "JSON lines")
    assert staged.path.parent == tmp_path and staged.path.name.endswith(".partial.jsonl")
    assert partial_of(target) == staged.path
    staged.path.write_text("new\n")
    assert target.read_text() == "old\n"
    staged.commit()
    assert target.read_text() == "new\n" and partial_of(target) is None
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    with pytest.raises(SinkError, match="does not exist; create it first"):
        StagedFile(tmp_path / "missing" / "x.mp4", "video")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_jsonl_replaces_its_target_on_close_and_keeps_lines_beside_it_on_abort(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("precious\n")
    sink = JsonlSink(target)
    sink.write(result())
    sink.write(result())
    kept = sink.abort()
    assert target.read_text() == "precious\n"
    assert kept is not None and len(list(read_jsonl(kept))) == 2
    empty = JsonlSink(target)
    assert empty.abort() is None and sorted(tmp_path.iterdir()) == sorted([target, kept])  # nothing worth keeping
    sink = JsonlSink(target)
    sink.write(result())
    sink.close()
    assert len(list(read_jsonl(target))) == 1


class _Failing(SyntheticSource):
    def __init__(self) -> None:
        super().__init__(width=320, height=180, frames=50)

    def read(self, timeout: float):
        frame = super().read(timeout)
        if frame.index == 3:
            raise SourceError("camera unplugged")
        return frame


def test_a_failed_run_leaves_existing_outputs_as_they_were(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("precious\n")
    backend = FakeBackend()
    with pytest.raises(SourceError, match="camera unplugged"):
        with Pipeline(_Failing(), backend=backend, sinks=[JsonlSink(target)], render=False) as pipeline:
            for _ in pipeline:
                pass
    assert target.read_text() == "precious\n"
    assert len(pipeline.kept) == 1 and len(list(read_jsonl(pipeline.kept[0]))) == 3


# -- out of memory, said in words -----------------------------------------------------------------

class _OutOfMemoryBackend(FakeBackend):
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.9 GiB total)")


def test_gpu_out_of_memory_names_the_model_the_frame_size_and_what_to_try() -> None:
    source = SyntheticSource(width=320, height=180, frames=5)
    with pytest.raises(OutOfMemory) as caught:
        with Pipeline(source, backend=_OutOfMemoryBackend(), render=False) as pipeline:
            for _ in pipeline:
                pass
    message = str(caught.value)
    assert "fake ran out of memory running fake-road on 320x180 frames" in message
    assert "Tried to allocate 2.00 GiB" in message and "FP16" in message and "--backend onnxruntime" in message
    assert isinstance(caught.value, MemoryError)  # callers catching the builtin keep working


def test_out_of_memory_is_recognised_from_every_backend_and_only_there() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[TRT] [E] 1: [defaultAllocator.cpp] Error: cudaErrorMemoryAllocation"))
    assert is_out_of_memory(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(SinkError("video out.mp4: out of memory on the disk?"))


# -- a full disk while running: exit 1, the target untouched, the lines kept ----------------------

@pytest.mark.integration
def test_a_full_disk_mid_run_exits_1_and_keeps_the_whole_lines(shared: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SEGENGINE_CACHE_DIR": str(tmp_path / "cache"), "SEGENGINE_MODEL_DIR": str(shared / "models")}
    with small_filesystem(tmp_path / "small", "512k") as small:
        target = small / "out.jsonl"
        target.write_text("precious\n")
        done = _cli("run", "synthetic://?width=320&height=180&frames=2000", "--json", str(target),
                    "--json-masks", "all", "--overwrite", "-q", env=env, timeout=600)
        assert done.returncode == 1, done.stderr
        assert "the disk is full" in done.stderr and "Traceback" not in done.stderr
        assert target.read_text() == "precious\n"
        kept = partial_of(target)
        assert kept is not None and f"kept what was written in {kept}" in done.stderr
        lines = list(read_jsonl(kept))  # every line whole: the cut one was taken back
        assert lines and [r["frame"] for r in lines] == list(range(len(lines)))
        assert f"at frame {len(lines)}:" in done.stderr  # the frame whose line did not fit


def test_sinks_for_an_unknown_backend_leave_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("precious\n")
    done = _cli("run", "synthetic://?frames=3", "--json", str(target), "--overwrite", "--backend", "tensorrt", "-q")
    assert done.returncode == 2 and "TensorRT" in done.stderr
    assert target.read_text() == "precious\n" and list(tmp_path.iterdir()) == [target]



def test_a_sink_on_its_own_thread_is_aborted_like_the_sink_itself(tmp_path: Path) -> None:
    from segengine.sinks.threaded import ThreadedSink

    target = tmp_path / "out.jsonl"
    sink = ThreadedSink(JsonlSink(target), policy="lossless")
    sink.write(result())
    kept = sink.abort()
    assert not target.exists() and kept is not None and len(list(read_jsonl(kept))) == 1


def test_devices_and_pipes_are_never_replaced_by_an_output(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        check_outputs({"--json": Path("/dev/null")}, overwrite=True)
    with pytest.raises(SinkError, match="not a regular file"):
        JsonlSink(fifo)
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()


def test_sigterm_during_track_exits_143_and_leaves_no_half_written_tracks(tmp_path: Path) -> None:
    detections = tmp_path / "det.txt"
    rows = (f"{f},-1,{10 + 40 * k + f % 7},{20 + 30 * k},30,60,0.9,-1,-1,-1"
            for f in range(1, 40_001) for k in range(8))
    detections.write_text("\n".join(rows) + "\n")
    out = tmp_path / "tracks.txt"
    out.write_text("yesterday's tracks\n")
    proc = subprocess.Popen([sys.executable, "-m", "segengine.cli", "track", str(detections), "-o", str(out),
                             "--overwrite", "-q"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while partial_of(out) is None or partial_of(out).stat().st_size == 0:  # tracks are being written
            assert proc.poll() is None and time.monotonic() < deadline, "track ended before it could be stopped"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert out.read_text() == "yesterday's tracks\n" and partial_of(out) is None
