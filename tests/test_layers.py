"""Output layers: decoded per batch row from the spec, serialised, scored; results give them by kind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segengine.errors import ConfigError
from segengine.layers import (
    KINDS,
    BinaryMap,
    Instances,
    LaneFollower,
    LaneLines,
    SemanticMap,
    decode_layers,
    layer_type,
    map_from_json,
)
from segengine.rle import decode_mask
from tests.factories import FakeBackend, box_instances, class_map, frame, result, road_spec


def _batch() -> np.ndarray:
    a, b = frame(value=40).image.copy(), frame(value=40).image.copy()
    a[20:60, 30:90] = 255
    b[100:150, 200:300] = 255
    return np.stack([a, b])


def test_each_batch_row_decodes_to_its_own_layers() -> None:
    backend = FakeBackend(spec=road_spec(max_batch=2))
    outputs = backend.infer(_batch())
    rows = [decode_layers(outputs, backend.spec, row) for row in (0, 1)]
    assert [list(r) for r in rows] == [["drivable", "lanes", "instances"]] * 2
    assert [type(layer) for layer in rows[0].values()] == [BinaryMap, LaneLines, Instances]
    np.testing.assert_array_equal(rows[0]["instances"].boxes, [[30, 20, 90, 60]])
    np.testing.assert_array_equal(rows[1]["instances"].boxes, [[200, 100, 300, 150]])
    assert rows[1]["instances"].class_names == backend.spec.output("instances").classes
    assert rows[0]["lanes"].polylines is None  # fitted by the per-stream stage, not by decoding


def test_unknown_kinds_are_refused_with_the_known_ones() -> None:
    assert set(KINDS) == {"instances", "binary_map", "lane_lines", "semantic"}
    with pytest.raises(ConfigError, match="kind 'depth' is not known.*instances"):
        layer_type("depth")


def test_maps_round_trip_through_json_at_model_resolution() -> None:
    drivable = class_map(BinaryMap, fill={1: (slice(40, None), slice(10, 150))})
    semantic = class_map(SemanticMap, classes=("road", "car", "sky"),
                         fill={1: (slice(50, 70), slice(20, 60)), 2: (slice(0, 20), slice(None))})
    for layer in (drivable, semantic):
        obj = json.loads(json.dumps(layer.to_json()))
        np.testing.assert_array_equal(map_from_json(obj), layer.to_frame())
        assert all(rle["size"] == list(layer.classes.shape) for rle in obj["masks"].values())
    assert set(drivable.to_json()["masks"]) == {"drivable"}  # "background" is implied
    assert set(semantic.to_json()["masks"]) == {"road", "car", "sky"}  # class 0 of a semantic map is a class


def test_instances_serialise_masks_at_frame_resolution_with_their_tracks() -> None:
    inst = box_instances([[10, 20, 60, 80], [100, 40, 200, 120]], class_ids=[0, 2], track_ids=[7, -1])
    obj = inst.to_json()
    assert obj["kind"] == "instances" and [i["track_id"] for i in obj["items"]] == [7, None]
    assert [i["class"] for i in obj["items"]] == ["person", "car"]
    for item, mask in zip(obj["items"], inst.frame_masks()):
        np.testing.assert_array_equal(decode_mask(item["mask"]), mask)


def test_class_masks_for_the_evaluator() -> None:
    inst = box_instances([[0, 0, 40, 40], [100, 100, 160, 160], [200, 0, 240, 40]], class_ids=[2, 2, 0])
    masks = inst.class_masks(["car", "person", "bicycle", "not a class"])
    assert masks["car"].shape == (180, 320) and masks["car"][20, 20] and masks["car"][130, 130]
    assert masks["person"][20, 220] and not masks["person"][20, 20]
    assert not masks["bicycle"].any() and not masks["not a class"].any()
    drivable = class_map(BinaryMap)
    assert drivable.class_masks(["drivable"])["drivable"].mean() == pytest.approx(0.5)


def test_results_give_layers_by_kind_and_by_name() -> None:
    lanes = class_map(LaneLines, classes=("background", "lane"))
    r = result({"road": class_map(BinaryMap), "lanes": lanes, "cars": box_instances([[1, 1, 9, 9]])})
    assert isinstance(r.drivable, BinaryMap) and r.lanes is lanes and len(r.instances) == 1 and r.semantic is None
    assert r.get("lanes", LaneLines) is lanes
    with pytest.raises(ConfigError, match="no Instances layer named 'road'.*road \\(BinaryMap\\)"):
        r.get("road", Instances)
    fitted = LaneFollower().update(lanes, 0.0)
    assert r.with_layer("lanes", fitted).lanes is fitted and r.lanes is lanes  # a new result; this one unchanged


def test_shapes_are_checked_with_expected_and_actual() -> None:
    with pytest.raises(ConfigError, match=r"Instances.scores: expected \(1,\)"):
        Instances(np.zeros((1, 4), np.float32), np.zeros(2, np.float32), np.zeros(1, np.int32),
                  np.zeros((1, 4, 4), np.uint8), road_spec().outputs[2].placement, ("a",))
    with pytest.raises(ConfigError, match="BinaryMap.classes: expected an h×w uint8 map"):
        BinaryMap(np.zeros((2, 2), np.float32), road_spec().outputs[0].placement, ("a", "b"))
