"""The export names nodes by part, and benchmarks/graph_profile.py sums a profile by op and by part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from benchmarks.graph_profile import Profile, Record, by_key, ort_records, part_totals, profile_ort, table
from segengine.geometry import stretch
from segengine.graph.compose import SegmentationGraph, export_graph
from segengine.graph.heads import LaneHead
from segengine.graph.naming import part_of
from segengine.models.card import Preprocess


class _TinyLanes(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y[:, :2], y[:, 2:]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    head = LaneHead("tiny", _TinyLanes(), stretch((48, 64), (24, 32)), Preprocess(resize="stretch"))
    return export_graph(SegmentationGraph([head], (48, 64), "tiny").eval(), tmp_path_factory.mktemp("g") / "t.onnx")


def test_every_node_is_named_by_its_part(tiny: Path) -> None:
    nodes = onnx.load(str(tiny)).graph.node
    parts = {n.name.split("/")[0] + "/" + n.name.split("/")[1] for n in nodes}
    assert parts == {"tiny/pre", "tiny/net", "tiny/post"}
    assert {n.op_type for n in nodes if n.name.startswith("tiny/net/")} >= {"Conv"}
    assert {n.op_type for n in nodes if n.name.startswith("tiny/pre/")} >= {"Gather", "Div"}
    assert {n.op_type for n in nodes if n.name.startswith("tiny/post/")} >= {"Greater"}


def test_part_of_reads_the_exporters_namespace() -> None:
    heads = {"heads.0": "a", "heads.1": "b"}
    ns = ": x.SegmentationGraph/heads.1: x.InstanceHead/heads.1.net: x.Yolo/model.3: x.Conv/conv: aten.conv2d"
    assert part_of(ns, heads) == ("b", "net")
    assert part_of(": x.SegmentationGraph/heads.0: x.LaneHead/heads.0.pre: x.Pre/mul: aten.mul", heads) == ("a", "pre")
    assert part_of(": x.SegmentationGraph/heads.0: x.LaneHead/gt: aten.gt", heads) == ("a", "post")
    assert part_of(": x.SegmentationGraph/add: aten.add", heads) is None


def test_ort_trace_is_summed_per_node_without_the_first_run() -> None:
    def run(ts: int) -> dict:
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 100}

    def node(name: str, ts: int, dur: int, op: str = "Conv") -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    trace = [run(0), node("m/net/c", 10, 50),  # the first run: left out
             run(200), node("m/net/c", 210, 30), node("y_nchwc", 220, 5), node("r", 230, 1, "ReorderOutput"),
             run(400), node("m/net/c", 410, 20), node("m/post/t", 420, 7, "TopK"),
             node("m/net/c", 900, 1000)]  # outside any run
    runs, records = ort_records(trace, {"y": "m/pre/mul_3", "x": "m/net/other"})
    got = {(r.node, r.part): r.us for r in records}
    assert runs == 2
    assert got == {("m/net/c", "m/net"): 50, ("y_nchwc", "m/pre"): 5, ("r", "other"): 1, ("m/post/t", "m/post"): 7}


def test_tables_and_totals_by_part() -> None:
    profile = Profile("x", 2, (Record("a", "Conv", "k", 3000, "m/net"), Record("b", "TopK", "k", 1000, "m/post"),
                               Record("c", "Conv", "k", 1000, "m/net"), Record("d", "Reorder", "k", 1000, "other")))
    assert profile.ms_per_frame == 3.0
    assert part_totals(profile) == {"network": 2.0, "pre/post-processing": 0.5, "other": 0.5}
    assert by_key(profile, "op")[0] == ("Conv", 4000)
    assert "| Conv | 66.7 % | 2.00 |" in table(profile, "op", 5)
    assert "(2 more)" in table(profile, "op", 1)


def test_profiling_a_real_session(tiny: Path) -> None:
    frames = [np.full((48, 64, 3), i, np.uint8) for i in range(3)]
    profile = profile_ort(tiny, frames)
    assert profile.frames == 3
    totals = part_totals(profile)
    assert totals["network"] > 0 and totals["pre/post-processing"] > 0
    assert {r.part for r in profile.records if r.op == "Conv"} == {"tiny/net"}
