"""The pipeline end to end: files, image folders, the synthetic source, signals, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import av
import numpy as np
import pytest

from segengine.capture.synthetic import SyntheticSource
from segengine.errors import SourceError
from segengine.models import zoo
from segengine.pipeline import Pipeline
from segengine.sinks.jsonl import JsonlSink, read_jsonl
from segengine.sinks.staging import partial_of
from segengine.types import Frame, SourceInfo, SourceStatus


@pytest.fixture(scope="module")
def env(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One cache for the module, so each preset graph is exported once per frame size."""
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "SEGENGINE_CACHE_DIR": str(cache), "SEGENGINE_MODEL_DIR": str(shared / "models")}


@pytest.fixture(scope="module")
def dirs(env: dict[str, str]) -> zoo.WeightDirs:
    return zoo.WeightDirs(cache=Path(env["SEGENGINE_CACHE_DIR"]) / "models", mirror=Path(env["SEGENGINE_MODEL_DIR"]))


def _cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segengine.cli", "run", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _pts(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [round(f.time, 4) for f in container.decode(video=0)]


def test_video_to_overlaid_mp4_and_json(shared: Path, env: dict[str, str], tmp_path: Path) -> None:
    video = shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    done = _cli(str(video), "-o", str(out), "--json", str(js), env=env)
    assert done.returncode == 0, done.stderr
    assert "throughput" in done.stderr and "dropped 0" in done.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (960, 540)
    assert _pts(out) == _pts(video) and len(_pts(out)) == 221  # every frame, same timestamps
    records = list(read_jsonl(js))
    assert [r["frame"] for r in records] == list(range(221))
    # Cars are found and keep their ids: some track lives through most of the video.
    lifetimes: dict[int, int] = {}
    for r in records:
        assert r["schema"] == 2 and set(r["layers"]) == {"drivable", "lanes", "instances"}
        for inst in r["layers"]["instances"]["items"]:
            if inst["class"] == "car":
                lifetimes[inst["track_id"]] = lifetimes.get(inst["track_id"], 0) + 1
    assert max(lifetimes.values()) > 150
    assert sum(len(r["layers"]["lanes"]["polylines"]) >= 2 for r in records) > 200  # both lane lines, nearly always
    # The CLI writes instance masks, not the maps' (only where asked: --json-masks all).
    assert all(r["layers"]["drivable"]["masks"] is None for r in records)
    assert all(i["mask"]["size"] == [540, 960] for r in records for i in r["layers"]["instances"]["items"])


def test_image_folder_to_images_and_json(shared: Path, env: dict[str, str], tmp_path: Path) -> None:
    folder = shared / "data" / "images" / "udacity_lanelines"
    done = _cli(str(folder), "--images-out", str(tmp_path / "frames"), "--json", str(tmp_path / "o.jsonl"),
                env=env)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "frames").iterdir())) == 6
    assert len(list(read_jsonl(tmp_path / "o.jsonl"))) == 6


def test_synthetic_source_through_the_api(dirs: zoo.WeightDirs, tmp_path: Path) -> None:
    source = SyntheticSource(width=960, height=540, fps=25, frames=12)
    with Pipeline(source, sinks=[JsonlSink(tmp_path / "s.jsonl")], dirs=dirs) as pipeline:
        results = list(pipeline)
    assert [r.frame.index for r in results] == list(range(12))
    assert all(r.rendered is not None and r.rendered.shape == (540, 960, 3) for r in results)
    assert all(r.drivable is not None and r.instances is not None for r in results)
    assert pipeline.stats.frames == 12 and not _engine_threads()
    assert len(list(read_jsonl(tmp_path / "s.jsonl"))) == 12


class _Failing:
    """A source that breaks after a few frames, as a camera unplugged mid-run would."""

    def __init__(self) -> None:
        self.inner = SyntheticSource(width=320, height=180, frames=100)

    @property
    def info(self) -> SourceInfo:
        return self.inner.info

    @property
    def status(self) -> SourceStatus:
        return self.inner.status

    def open(self) -> None:
        self.inner.open()

    def read(self, timeout: float) -> Frame:
        frame = self.inner.read(timeout)
        if frame.index == 3:
            raise SourceError("camera unplugged")
        return frame

    def close(self) -> None:
        self.inner.close()


def test_a_failing_source_is_reraised_and_outputs_are_finalised(dirs: zoo.WeightDirs, tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "f.jsonl")
    with pytest.raises(SourceError, match="camera unplugged"):
        with Pipeline(_Failing(), sinks=[sink], dirs=dirs) as pipeline:
            for _ in pipeline:
                pass
    # A failed run leaves the target alone and keeps what it wrote beside it.
    assert not (tmp_path / "f.jsonl").exists()
    assert pipeline.kept == [partial_of(tmp_path / "f.jsonl")]
    assert len(list(read_jsonl(pipeline.kept[0]))) == 3
    assert not _engine_threads()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_leaves_playable_outputs(sig: int, code: int, shared: Path, env: dict[str, str],
                                                tmp_path: Path) -> None:
    video = shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "segengine.cli", "run", str(video), "-o", str(out),
                             "--json", str(js)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while ((partial := partial_of(js)) is None or len(partial.read_text().splitlines()) < 5) \
            and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5, "threads did not stop within 5 s"
    assert proc.returncode == code, err
    written = len(list(read_jsonl(js)))
    assert 5 <= written < 221
    assert len(_pts(out)) == written  # the MP4 was finalised and plays, frame for frame with the JSON


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "source not found"),
    (["{junk}"], "not a media file"),
    (["{video}", "-o", "{tmp}/out.avi"], ".avi"),
    (["{video}", "--model", "{junk}"], "junk.bin"),
    (["{video}", "--preset", "highway"], "unknown preset or model 'highway'"),
    (["{video}", "--backend", "tensorrt"], "TensorRT"),
    (["{video}", "--max-frames", "0"], "positive whole number"),
])
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str, shared: Path, env: dict[str, str],
                                                tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    names = {"missing": tmp_path / "nope.mp4", "junk": junk, "tmp": tmp_path,
             "video": shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"}
    done = _cli(*(a.format(**names) for a in args), env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message.lower() in done.stderr.lower() and "Traceback" not in done.stderr


def _engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("segengine", "capture:")) and t.is_alive()]


def test_json_lines_are_complete_while_running(shared: Path, env: dict[str, str], tmp_path: Path) -> None:
    video = shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"
    done = _cli(str(video), "--json", "-", "--max-frames", "3", "--quiet", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(json.loads(line)["size"] == [540, 960] for line in lines)


def test_live_source_keeps_latency_bounded_by_dropping(dirs: zoo.WeightDirs) -> None:
    """A live feed faster than inference: the oldest frames are dropped and counted, latency stays low."""
    source = SyntheticSource(width=320, height=180, fps=100, frames=None, live=True)
    with Pipeline(source, max_frames=15, render=False, dirs=dirs) as pipeline:
        results = list(pipeline)
    assert len(results) == 15
    assert pipeline.stats.dropped > 0 or pipeline._capture.dropped > 0
    indices = [r.frame.index for r in results]
    assert indices == sorted(indices) and indices[-1] > 20  # frames were skipped, order kept
    assert pipeline.stats.stages["latency"].percentile(99) < 3.0


def test_torch_backend_runs_the_same_graph(dirs: zoo.WeightDirs) -> None:
    source = SyntheticSource(width=320, height=180, fps=25, frames=3)
    with Pipeline(source, backend="torch", render=False, dirs=dirs) as pipeline:
        results = list(pipeline)
    assert len(results) == 3 and all(r.drivable is not None and r.instances is not None for r in results)


def test_rotated_video_is_processed_upright_with_aligned_masks(shared: Path, dirs: zoo.WeightDirs,
                                                               tmp_path: Path) -> None:
    """A phone-style file (pixels stored sideways, a display rotation in the metadata) gives the
    same frames, boxes and masks as the upright file: one policy, applied at decode."""
    with av.open(str(shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4")) as container:
        images = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), container.decode(video=0))]

    def write(path: Path, stored: list[np.ndarray], rotation: int | None) -> Path:
        with av.open(str(path), "w") as out:  # lossless, so both files decode to the very same pixels
            stream = out.add_stream("libx264", rate=25, options={"qp": "0"})
            stream.height, stream.width = stored[0].shape[:2]
            stream.pix_fmt = "yuv444p"
            if rotation is not None:
                stream.set_display_rotation(rotation)
            for image in stored:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
            out.mux(stream.encode())
        return path

    upright = write(tmp_path / "upright.mp4", images, None)
    sideways = write(tmp_path / "sideways.mp4", [np.rot90(i, -1) for i in images], 90)
    runs = []
    for path in (upright, sideways):
        with Pipeline(str(path), render=False, dirs=dirs) as pipeline:
            runs.append(list(pipeline))
    for a, b in zip(*runs):
        assert b.frame.size == (540, 960) and np.array_equal(a.frame.image, b.frame.image)
        assert a.instances is not None and b.instances is not None and len(a.instances) > 0
        assert np.array_equal(a.instances.boxes, b.instances.boxes)
        assert np.array_equal(a.instances.frame_masks(), b.instances.frame_masks())
        assert np.array_equal(a.drivable.to_frame(), b.drivable.to_frame())


def test_truncated_recording_keeps_what_was_recorded_and_exits_3(shared: Path, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    """A recording cut off mid-file (its index is at the front): every frame before the cut is
    processed and written, the summary says 'partial', and the exit code says the input was damaged."""
    data = (shared / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 10])
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    done = _cli(str(cut), "-o", str(out), "--json", str(js), env=env)
    assert done.returncode == 3, done.stderr
    assert "partial: ended after" in done.stderr and "of 221 frames" in done.stderr
    records = list(read_jsonl(js))
    assert 5 < len(records) < 60 and records[-1]["source"]["partial"] is not None
    assert len(_pts(out)) == len(records)  # playable, with every frame that was read


class _InFlight:
    """A backend that keeps frames in flight as TensorRT's double-buffered runtime does
    (``submit`` now, ``collect`` later), computing with ONNX Runtime underneath."""

    name = "in-flight"
    depth = 2

    def __init__(self, inner) -> None:
        self.inner, self.spec = inner, inner.spec
        self.queued: deque[dict[str, np.ndarray]] = deque()
        self.calls: list[str] = []
        self.most_in_flight = 0

    def infer(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        raise AssertionError("a pipelined backend is driven by submit/collect")

    def submit(self, frame: np.ndarray) -> None:
        self.queued.append(self.inner.infer(frame))
        self.calls.append("submit")
        self.most_in_flight = max(self.most_in_flight, len(self.queued))

    def collect(self) -> dict[str, np.ndarray]:
        self.calls.append("collect")
        return self.queued.popleft()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(("live", "fps", "in_flight"), [(False, 25, 2), (True, 0.4, 1)])
def test_frames_in_flight_overlap_on_files_and_add_no_latency_on_a_slow_live_feed(
        live: bool, fps: float, in_flight: int, dirs: zoo.WeightDirs, monkeypatch: pytest.MonkeyPatch) -> None:
    import segengine.pipeline as pipeline_module

    frames = 3 if live else 6  # the scene depends on the length: the same for both runs
    with Pipeline(SyntheticSource(width=320, height=180, frames=frames), render=False, dirs=dirs) as pipeline:
        plain = list(pipeline)  # also caches the graph: the live run below starts without a backlog
    made: list[_InFlight] = []
    streams: list[int] = []
    real = pipeline_module.open_backend

    def open_backend(choice, prepared, options) -> _InFlight:
        streams.append(options.streams)
        made.append(_InFlight(real(choice, prepared, options)))
        return made[-1]

    monkeypatch.setattr(pipeline_module, "open_backend", open_backend)
    source = SyntheticSource(width=320, height=180, fps=fps, frames=frames, live=live)
    with Pipeline(source, render=False, dirs=dirs) as pipeline:
        results = list(pipeline)
    backend, indices = made[0], [r.frame.index for r in results]
    assert indices == list(range(frames))
    assert backend.calls.count("submit") == backend.calls.count("collect") == len(results)
    # A file: N+1 is submitted before N is collected. A live feed between frames: N is collected
    # at once instead of waiting for N+1.
    assert backend.most_in_flight == in_flight
    assert streams == [1 if live else 0]  # a live feed asks for one frame at a time: the lowest latency
    for a in results:  # the same answers as the synchronous path
        b = plain[a.frame.index]
        assert np.array_equal(a.instances.boxes, b.instances.boxes)
        assert np.array_equal(a.drivable.classes, b.drivable.classes)
