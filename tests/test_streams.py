"""Many streams through one engine, without weights: the batcher, per-stream state, add/remove, failures, config."""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from segengine.capture.factory import open_source
from segengine.errors import ConfigError, SourceError
from segengine.pipeline import Pipeline
from segengine.streams import config
from segengine.streams.ids import check_id, derive_id, expand, unique_ids
from segengine.streams.pipeline import MultiPipeline
from segengine.streams.stream import StreamOptions
from segengine.tracking.mask_tracker import MaskTracker
from tests.factories import FakeBackend, road_spec

SIZE = (180, 320)


def synthetic(seed: int, frames: int = 30, *, live: bool = False, fps: int = 25) -> str:
    return f"synthetic://?width={SIZE[1]}&height={SIZE[0]}&frames={frames}&seed={seed}&live={int(live)}&fps={fps}"


class SlowFake(FakeBackend):
    """The fake backend, taking ``per_frame`` seconds a frame (a CPU's cost grows with the batch); records batches."""

    def __init__(self, per_frame: float = 0.0, max_batch: int = 4) -> None:
        super().__init__(spec=road_spec(SIZE, max_batch=max_batch))
        self.per_frame = per_frame
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert batch.ndim == 4 and len(batch) <= self.spec.input.max_batch
        time.sleep(self.per_frame * len(batch))
        return super().infer(batch)


def _summary(result) -> tuple:
    inst = result.instances
    ids = () if inst is None or inst.track_ids is None else tuple(int(t) for t in inst.track_ids)
    boxes = () if inst is None else tuple(np.round(inst.boxes, 3).ravel().tolist())
    return result.frame.index, result.frame.pts, ids, boxes, bool(result.inferred)


def _single(uri: str, **kwargs) -> list[tuple]:
    with Pipeline(uri, backend=FakeBackend(spec=road_spec(SIZE)), render=False, tracker=MaskTracker(),
                  **kwargs) as p:
        return [_summary(r) for r in p]


def test_three_streams_give_each_the_results_of_its_own_single_run() -> None:
    uris = [synthetic(seed) for seed in (1, 2, 3)]
    backend = SlowFake()
    with MultiPipeline(backend=backend, render=False) as p:
        ids = [p.add_source(u, stream_id=f"s{i}", tracker=MaskTracker()) for i, u in enumerate(uris)]
        got: dict[str, list[tuple]] = {sid: [] for sid in ids}
        for result in p:
            got[result.frame.stream].append(_summary(result))
    for sid, uri in zip(ids, uris):
        assert got[sid] == _single(uri), sid
        assert p.streams[sid].state == "ended" and p.streams[sid].stats.frames == 30
    assert max(p.batcher.sizes) == 3  # one frame of each stream per backend call
    assert sum(n * count for n, count in p.batcher.sizes.items()) == 90


class InFlightFake(SlowFake):
    """A backend that keeps up to ``depth`` calls in flight (OpenVINO's streams): submit, then collect."""

    depth = 2

    def __init__(self) -> None:
        super().__init__(max_batch=1)
        self._pending: list[np.ndarray] = []
        self.most_in_flight = 0

    def submit(self, frame: np.ndarray) -> None:
        assert len(self._pending) < self.depth, "more calls in flight than the backend's depth"
        self._pending.append(frame.copy())
        self.most_in_flight = max(self.most_in_flight, len(self._pending))

    def collect(self) -> dict[str, np.ndarray]:
        return self.infer(self._pending.pop(0))


@pytest.mark.parametrize("streams", [1, 3])
def test_a_backend_with_frames_in_flight_keeps_them_in_flight_and_the_results_in_order(streams: int) -> None:
    uris = [synthetic(seed, frames=20) for seed in range(1, streams + 1)]
    backend = InFlightFake()
    with MultiPipeline(backend=backend, render=False) as p:
        for i, uri in enumerate(uris):
            p.add_source(uri, stream_id=f"s{i}", tracker=MaskTracker(), options=StreamOptions(interval=1 + i))
        got: dict[str, list[tuple]] = {f"s{i}": [] for i in range(streams)}
        for result in p:
            got[result.frame.stream].append(_summary(result))
    assert backend.most_in_flight == 2  # one stream too: its next frame computes while the last one's comes back
    for i, uri in enumerate(uris):
        assert got[f"s{i}"] == _single(uri, interval=1 + i)


def test_interval_and_max_frames_are_per_stream() -> None:
    with MultiPipeline([synthetic(1)], backend=SlowFake(), render=False) as p:
        p.add_source(synthetic(2), stream_id="every3", options=StreamOptions(interval=3, max_frames=10))
        results = list(p)
    every3 = [r for r in results if r.frame.stream == "every3"]
    assert [r.frame.index for r in every3] == list(range(10))
    assert [r.inferred for r in every3] == [i % 3 == 0 for i in range(10)]
    assert sum(r.frame.stream != "every3" for r in results) == 30


def _leak_baseline() -> tuple[int, int]:
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


def test_add_and_remove_streams_while_running_leaves_no_thread_or_descriptor(tmp_path: Path) -> None:
    from segengine.sinks.jsonl import JsonlSink

    before = _leak_baseline()
    with MultiPipeline([synthetic(0, frames=None, live=True)], backend=SlowFake(), render=False,
                       linger=True) as p:
        results = iter(p)
        for i in range(20):
            sink = JsonlSink(tmp_path / f"{i}.jsonl")
            sid = p.add_source(synthetic(i + 1, frames=None, live=True), sinks=[sink])
            seen = 0
            while seen < 2:  # the new stream delivers
                seen += next(results).frame.stream == sid
            stream = p.remove_source(sid)
            assert stream.state == "removed" and stream.done.is_set()
            assert (tmp_path / f"{i}.jsonl").stat().st_size > 0  # its output finalised under its name
        assert list(p.streams) == [derive_id(synthetic(0)), *[s for s in p.streams if s != "synthetic"]]
        assert p.streams["synthetic"].state == "running"
        again = p.add_source(synthetic(99, frames=None, live=True), stream_id="synthetic-2")  # removed: free again
        assert again == "synthetic-2" and p.streams[again].state == "running"
    time.sleep(0.2)
    assert _leak_baseline() == before


class _Breaking:
    """A file-like source that fails after ``after`` frames."""

    def __init__(self, uri: str, after: int) -> None:
        self._inner, self.after = open_source(uri), after
        self.info = self._inner.info

    def open(self) -> None:
        self._inner.open()

    @property
    def status(self):
        return self._inner.status

    def read(self, timeout: float):
        frame = self._inner.read(timeout)
        if frame.index >= self.after:
            raise SourceError("the disk holding it went away")
        return frame

    def close(self) -> None:
        self._inner.close()


def test_one_stream_failing_stops_alone_and_is_reported(tmp_path: Path) -> None:
    from segengine.sinks.jsonl import JsonlSink

    with MultiPipeline(backend=SlowFake(), render=False) as p:
        p.add_source(synthetic(1), stream_id="good")
        p.add_source(_Breaking(synthetic(2), after=5), stream_id="bad",
                     sinks=[JsonlSink(tmp_path / "bad.jsonl")])
        results = list(p)
    assert sum(r.frame.stream == "good" for r in results) == 30
    assert sum(r.frame.stream == "bad" for r in results) == 5
    assert p.streams["bad"].state == "failed" and "went away" in str(p.failures["bad"])
    assert p.streams["good"].state == "ended" and "good" not in p.failures
    assert not (tmp_path / "bad.jsonl").exists() and len(p.streams["bad"].kept) == 1  # kept beside, named


def test_a_live_stream_keeps_bounded_latency_beside_a_lossless_file() -> None:
    """A file's frames are always ready; the live camera still gets a row in every batch."""
    per_frame = 0.02
    backend = SlowFake(per_frame=per_frame)
    with MultiPipeline(backend=backend, render=False) as p:
        p.add_source(synthetic(1, frames=400), stream_id="file")
        p.add_source(synthetic(2, frames=40, live=True, fps=20), stream_id="live")
        for result in p:
            if result.frame.stream == "live" and p.streams["live"].done.is_set():
                break
    live = p.streams["live"].stats
    assert live.frames >= 30 and p.streams["live"].status.dropped <= 5
    # a frame waits for at most the batch in progress, then its own (two rows each)
    assert live.stages["latency"].percentile(99) < 3 * (2 * per_frame) + 0.05


def test_a_slow_camera_never_holds_the_others_back() -> None:
    with MultiPipeline(backend=SlowFake(), render=False, batch_timeout=0.01) as p:
        p.add_source(synthetic(1, frames=60), stream_id="file")
        p.add_source(synthetic(2, frames=3, live=True, fps=2), stream_id="slow")
        t0 = time.monotonic()
        results = list(p)
    file_done = max(r.timings["latency"] for r in results if r.frame.stream == "file")
    assert sum(r.frame.stream == "file" for r in results) == 60
    assert file_done < 1.0 and time.monotonic() - t0 < 3.0


def test_a_bad_source_added_raises_in_the_callers_thread_and_its_sinks_are_finalised(tmp_path: Path) -> None:
    from segengine.sinks.jsonl import JsonlSink

    with MultiPipeline([synthetic(1, frames=5)], backend=SlowFake(), render=False) as p:
        with pytest.raises(ConfigError, match="synthetic"):
            p.add_source("synthetic://?width=99999", sinks=[JsonlSink(tmp_path / "x.jsonl")])
        with pytest.raises(ConfigError, match="already"):
            p.add_source(synthetic(2), stream_id="synthetic")
        assert len(list(p)) == 5
    assert not list(tmp_path.iterdir())


# -- ids and config -------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    ("videos/a.mp4", "a"), ("/data/clip 1.mp4", "clip-1"), ("images/*.png", "images"), ("/dev/video2", "video2"),
    ("rtsp://admin:hunter22@10.0.0.5:554/cam/main?token=s3cr3t", "10.0.0.5-554-cam-main"),
    ("synthetic://?frames=3", "synthetic"), ("csi://0", "csi-0"),
])
def test_stream_ids_are_safe_names_without_secrets(source: str, expected: str) -> None:
    assert derive_id(source) == expected
    assert check_id(derive_id(source))


def test_ids_repeat_numbered_and_given_ids_are_checked() -> None:
    assert unique_ids([None, None, "b"], ["x/a.mp4", "y/a.mp4", "c.mp4"]) == ["a", "a-2", "b"]
    with pytest.raises(ConfigError, match="two streams"):
        unique_ids(["a", "a"], ["1", "2"])
    with pytest.raises(ConfigError, match="stream id"):
        check_id("../etc")
    assert expand("out/{stream}.mp4", "cam1") == "out/cam1.mp4"
    with pytest.raises(ConfigError, match="placeholder"):
        expand("out/{name}.mp4", "cam1")


def _args(*sources: str, **flags) -> tuple[argparse.Namespace, dict]:
    from segengine.cli import _parser

    defaults = vars(_parser().parse_args(["run"]))
    argv = ["run", *sources]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return _parser().parse_args(argv), defaults


def test_config_precedence_file_defaults_then_flags_then_the_streams_own(tmp_path: Path) -> None:
    path = tmp_path / "streams.toml"
    path.write_text('[engine]\npreset = "street"\nmax_batch = 8\n'
                    '[defaults]\noutput = "out/{stream}.mp4"\nstall = 3.0\ninterval = 2\n'
                    '[[streams]]\nsource = "a.mp4"\nid = "front"\ninterval = 4\n'
                    '[[streams]]\nsource = "rtsp://u:p@cam/x"\npolicy = "latest"\n')
    args, defaults = _args("c.mp4", interval=3)
    data = config.load_file(path)
    got = config.requests(args, defaults, data, str(path))
    assert [(r.source, r.id) for r in got] == [("a.mp4", "front"), ("rtsp://u:p@cam/x", None), ("c.mp4", None)]
    assert [r.settings["interval"] for r in got] == [4, "3", "3"]  # own table > flag > file defaults
    assert {r.settings["stall"] for r in got} == {3.0} and got[1].settings["policy"] == "latest"
    assert config.engine_settings(data, str(path)) == {"preset": "street", "max_batch": 8}


@pytest.mark.parametrize(("text", "message"), [
    ("[[streams]]\nsource = 1\n", "source must be a str"),
    ("[[streams]]\nsorce = 'a.mp4'\n", "unknown key 'sorce'"),
    ("[defaults]\nsource = 'a.mp4'\n", "belongs to each"),
    ("[stream]\nsource = 'a.mp4'\n", "unknown table stream"),
    ("[[streams]]\nid = 'x'\n", "needs a source"),
    ("[[streams]\n", "not valid TOML"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    args, defaults = _args()
    with pytest.raises(ConfigError, match=message) as caught:
        config.requests(args, defaults, config.load_file(path), str(path))
    assert str(path) in str(caught.value)


def test_partial_batches_on_a_fixed_batch_engine_are_padded_and_cut_back() -> None:
    from segengine.backends.padding import BatchPadder
    from segengine.errors import BackendError

    padder = BatchPadder(4, (2, 3, 3))
    frames = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    padded = padder.pad(frames)
    assert padded.shape == (4, 2, 3, 3) and np.array_equal(padded[:2], frames) and not padded[2:].any()
    full = np.ones((4, 2, 3, 3), np.uint8)
    assert padder.pad(full) is full  # a full batch goes as it is
    assert padder.cut({"x": np.arange(4)})["x"].tolist() == [0, 1]  # oldest call first: its 2 rows
    assert padder.cut({"x": np.arange(4)})["x"].tolist() == [0, 1, 2, 3]
    with pytest.raises(BackendError, match="1 to 4"):
        padder.pad(np.zeros((5, 2, 3, 3), np.uint8))


@pytest.mark.parametrize(("args", "message"), [
    (["-o", "{dir}/out.mp4"], "would both write"),
    (["--json", "-"], "cannot share stdout"),
    (["--json", "{dir}/{name}.jsonl"], "only placeholder"),
    (["--json-masks", "all"], "json_masks says"),
])
def test_many_streams_bad_outputs_exit_2_before_anything_runs(tmp_path: Path, capsys, args: list[str],
                                                              message: str) -> None:
    from segengine.cli import main

    argv = ["run", synthetic(1), synthetic(2), *[a.replace("{dir}", str(tmp_path)) for a in args]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_when_no_stream_can_open_the_run_exits_2_naming_them(tmp_path: Path, capsys) -> None:
    from segengine.cli import main

    for name in ("bad", "worse"):
        (tmp_path / f"{name}.mp4").write_bytes(b"\x00garbage" * 50)
    assert main(["run", str(tmp_path / "bad.mp4"), str(tmp_path / "worse.mp4")]) == 2
    err = capsys.readouterr().err
    assert "stream bad failed" in err and "stream worse failed" in err
    # a path that does not exist is a typo: said at once, nothing runs
    assert main(["run", str(tmp_path / "bad.mp4"), str(tmp_path / "missing.mp4")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
