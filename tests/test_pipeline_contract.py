"""The pipeline on a fake backend (no weights): layers through per-stream stages, a given backend, and the
argument combinations that would silently do nothing refused."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from segengine.capture.synthetic import SyntheticSource
from segengine.errors import ConfigError
from segengine.layers import InstanceDrawer, Instances, LaneLines
from segengine.pipeline import Pipeline
from segengine.render.compose import LayerRenderer
from segengine.sinks.jsonl import JsonlSink, read_jsonl
from tests.factories import FakeBackend, road_spec


class _Bright(SyntheticSource):
    """A grey frame with one white square moving right: the fake backend boxes it."""

    def read(self, timeout: float):
        frame = super().read(timeout)
        x = 20 + 10 * frame.index
        frame.image[:] = 60
        frame.image[60:100, x:x + 40] = 255
        return frame


def _engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("segengine", "capture:")) and t.is_alive()]


def test_layers_pass_their_per_stream_stages_in_frame_order(tmp_path: Path) -> None:
    backend = FakeBackend(spec=road_spec((180, 320)))
    with Pipeline(_Bright(width=320, height=180, frames=8), backend=backend,
                  sinks=[JsonlSink(tmp_path / "r.jsonl")]) as pipeline:
        results = list(pipeline)
    assert [r.frame.index for r in results] == list(range(8)) and backend.calls == 8
    tracks = {int(r.instances.track_ids[0]) for r in results if len(r.instances)}
    assert len(tracks) == 1 and -1 not in tracks  # the tracker ran: one square, one id
    assert all(isinstance(r.lanes, LaneLines) and r.lanes.polylines is not None for r in results)  # lanes fitted
    assert all(r.rendered is not None and r.rendered.shape == (180, 320, 3) for r in results)
    records = list(read_jsonl(tmp_path / "r.jsonl"))
    assert [sorted(r["layers"]) for r in records] == [["drivable", "instances", "lanes"]] * 8
    assert records[-1]["layers"]["instances"]["items"][0]["box"] == [90.0, 60.0, 130.0, 100.0]
    assert not backend.closed and not _engine_threads()  # a given backend stays its owner's to close


def test_a_given_tracker_replaces_the_instances_stage() -> None:
    class Numbering:
        def __init__(self) -> None:
            self.frames = 0

        def update(self, instances: Instances, t: float) -> Instances:
            self.frames += 1
            return instances.with_tracks(np.full(len(instances), 100 + self.frames))

        def reset(self) -> None:
            self.frames = 0

    tracker = Numbering()
    with Pipeline(_Bright(width=320, height=180, frames=3), backend=FakeBackend(spec=road_spec((180, 320))),
                  tracker=tracker, render=False) as pipeline:
        ids = [int(r.instances.track_ids[0]) for r in pipeline]
    assert ids == [101, 102, 103] and tracker.frames == 3


def test_a_given_renderer_draws_only_its_drawers() -> None:
    renderer = LayerRenderer([InstanceDrawer(labels=False)])
    with Pipeline(_Bright(width=320, height=180, frames=2), backend=FakeBackend(spec=road_spec((180, 320))),
                  renderer=renderer) as pipeline:
        first = next(iter(pipeline))
    changed = (first.rendered != first.frame.image).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any() and ys.min() >= 50 and ys.max() <= 110  # the square's mask, no drivable area or HUD


def test_a_given_backend_for_another_frame_size_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError, match="graph for 640x360 frames; this source gives 320x180"):
        with Pipeline(SyntheticSource(width=320, height=180, frames=2),
                      backend=FakeBackend(spec=road_spec((360, 640)))) as pipeline:
            list(pipeline)
    assert not _engine_threads()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "ready", "loop": True}, "loop and source_options apply when the pipeline opens the source"),
    ({"source": "ready", "source_options": object()}, "loop and source_options apply"),
    ({"render": False, "renderer": LayerRenderer([])}, "render=False with a renderer"),
    ({"preset": "street", "model": Path("m.onnx")}, "both a preset"),
    ({"classes": Path("names.txt")}, "goes with your own model"),
    ({"backend": "fake-object", "preset": "road"}, "a backend object runs its own graph"),
    ({"backend": "tpu"}, "unknown backend 'tpu'"),
])
def test_arguments_that_would_do_nothing_are_refused(kwargs: dict, message: str) -> None:
    source = SyntheticSource(width=320, height=180, frames=1) if kwargs.pop("source", None) else "synthetic://?frames=1"
    if kwargs.get("backend") == "fake-object":
        kwargs["backend"] = FakeBackend(spec=road_spec((180, 320)))
    with pytest.raises(ConfigError, match=message):
        Pipeline(source, **kwargs)
