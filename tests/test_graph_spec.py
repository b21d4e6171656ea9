"""The graph spec: the one reader and writer of a graph's metadata; older graphs are rebuilt, never misread."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from segengine.errors import ConfigError
from segengine.geometry import Placement
from segengine.graph.compose import SegmentationGraph
from segengine.graph.heads import InstanceHead, LaneHead
from segengine.graph.spec import VERSION, GraphSpec, InputSpec, OutputSpec, StaleGraphError
from segengine.models import zoo
from tests.factories import road_spec

LEGACY = Path(__file__).parent / "data" / "legacy_road_960x540_description.json"


def test_a_spec_round_trips_through_json_and_onnx_metadata() -> None:
    spec = road_spec((540, 960), max_batch=4)
    assert GraphSpec.from_json(spec.to_json()) == spec
    model = onnx.ModelProto()
    model.metadata_props.add(key="author", value="someone")  # the user's own entries are kept
    spec.write(model)
    spec.write(model)  # writing again replaces, never duplicates
    assert GraphSpec.read(model) == spec
    assert sorted(e.key for e in model.metadata_props) == ["author", "segengine"]
    assert json.loads(spec.to_json())["version"] == VERSION == 2


def test_the_spec_carries_everything_the_old_metadata_did() -> None:
    """Today's road graph (960×540) as the previous format described it, against the spec the same heads
    write now: the same frame size, outputs, models, tensors, classes, placements and thresholds."""
    old = json.loads(LEGACY.read_text())
    inst = old["outputs"]["instances"]
    lanes = LaneHead("twinlitenet", torch.nn.Identity(), Placement.from_dict(old["outputs"]["drivable"]["placement"]),
                     zoo.card("twinlitenet").preprocess)
    yolo = InstanceHead("yolov5s-seg", torch.nn.Identity(), Placement.from_dict(inst["placement"]),
                        zoo.card("yolov5s-seg").preprocess, tuple(inst["classes"]), top_k=inst["top_k"],
                        conf_threshold=inst["conf_threshold"], iou_threshold=inst["iou_threshold"])
    graph = SegmentationGraph([lanes, yolo], tuple(old["frame_size"]), old["graph"])
    spec = GraphSpec.from_json(graph.spec().to_json())
    assert spec.name == old["graph"] and spec.input.name == old["input"]
    assert list(spec.frame_size) == old["frame_size"] and list(spec.tensor_names) == old["output_names"]
    kinds = {"drivable": "binary_map", "lanes": "lane_lines", "instances": "instances"}  # were binary, binary, ...
    for out in spec.outputs:
        info = old["outputs"][out.name]
        assert out.kind == kinds[out.name] and out.model == info["model"]
        assert out.placement.to_dict() == info["placement"]
    instances = spec.output("instances")
    assert list(instances.classes) == inst["classes"]
    assert dict(instances.extras) == {k: inst[k] for k in ("top_k", "conf_threshold", "iou_threshold")}


def test_old_and_future_metadata_are_refused_with_the_fix() -> None:
    with pytest.raises(StaleGraphError, match="older segengine.*Export it again"):
        GraphSpec.from_json(LEGACY.read_text())
    future = json.loads(road_spec().to_json()) | {"version": 99}
    with pytest.raises(StaleGraphError, match="graph format 99"):
        GraphSpec.from_json(json.dumps(future))
    assert issubclass(StaleGraphError, ConfigError)
    with pytest.raises(ConfigError, match="not JSON"):
        GraphSpec.from_json("{nope")
    broken = json.loads(road_spec().to_json())
    del broken["outputs"][0]["tensors"]
    with pytest.raises(ConfigError, match="incomplete"):
        GraphSpec.from_json(json.dumps(broken))
    with pytest.raises(ConfigError, match="no segengine spec"):
        GraphSpec.read(onnx.ModelProto())


def test_an_inconsistent_spec_is_refused_where_it_is_made() -> None:
    spec = road_spec()
    with pytest.raises(ConfigError, match="share a name"):
        GraphSpec("g", spec.input, (spec.outputs[0], spec.outputs[0]))
    other = OutputSpec("x", "binary_map", "m", ("drivable",), spec.outputs[0].placement, ("a", "b"))
    with pytest.raises(ConfigError, match="read the same tensor"):
        GraphSpec("g", spec.input, (spec.outputs[0], other))
    with pytest.raises(ConfigError, match="placed for frames"):
        GraphSpec("g", InputSpec((100, 100)), spec.outputs)
    with pytest.raises(ConfigError, match="out of range"):
        InputSpec((8, 8))
    with pytest.raises(ConfigError, match="class names"):
        OutputSpec("x", "binary_map", "m", ("t",), spec.outputs[0].placement, ())
    with pytest.raises(ConfigError, match="no output 'nope'"):
        spec.output("nope")


def test_a_cached_graph_of_the_old_format_is_exported_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segengine.graph import cache

    made: list[Path] = []

    def export(graph: object, path: Path) -> Path:
        made.append(path)
        model = onnx.ModelProto()
        road_spec((540, 960)).write(model)
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(cache, "build_graph", lambda name, size, dirs, max_batch: None)
    monkeypatch.setattr(cache, "export_graph", export)
    dirs = zoo.WeightDirs(cache=tmp_path / "models")
    stale = tmp_path / "graphs" / f"{cache.graph_key('road', (540, 960))}.onnx"
    stale.parent.mkdir(parents=True)
    old = onnx.ModelProto()
    old.metadata_props.add(key="segengine", value=LEGACY.read_text())  # what the previous segengine cached
    onnx.save(old, str(stale))
    path = cache.cached_graph("road", (540, 960), dirs=dirs)
    assert path == stale and len(made) == 1 and GraphSpec.read_file(path).version == VERSION
    assert cache.cached_graph("road", (540, 960), dirs=dirs) == path and len(made) == 1  # now it is reused
