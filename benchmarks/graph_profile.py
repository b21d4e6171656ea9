"""Per-op profile of a preset's graph on ONNX Runtime and OpenVINO: where a frame's time goes.

    python benchmarks/graph_profile.py [--preset road] [--video V] [--frames 30] [--top 15]
                                       [--backends ort,ov-fp32,ov-bf16] [--graph FILE.onnx]
    python benchmarks/graph_profile.py --fps A.onnx B.onnx [--runs 3]   # bare fps, alternating

ONNX Runtime: the session's own profiler (``enable_profiling``), its per-node kernel times
summed over the frames after the first (the first carries allocations). OpenVINO: a model
compiled with ``PERF_COUNT``, ``get_profiling_info()`` after each frame, one request (latency
mode: the whole CPU on one frame, so the shares are those of one frame). Each table gives op
type, share of the time and ms per frame, then the time by part: the export names every node
``<model>/<pre|net|post>/...`` (``segengine.graph.naming``), so "network" and "pre/post-processing"
are told apart; "other" is what a runtime inserted on its own (layout reorders, mostly).
Settings follow the engine's backends (denormals flushed, ORT threads sleeping when idle).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from segengine.graph.naming import PARTS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "udacity_lanelines_solidWhiteRight.mp4"


@dataclass(frozen=True)
class Record:
    """One node's time summed over the profiled frames."""

    node: str
    op: str  # ORT: op type; OpenVINO: node type
    kernel: str  # ORT: execution provider; OpenVINO: exec type (the primitive it chose)
    us: float
    part: str = "other"  # "<model>/<pre|net|post>" of the export node it came from, or "other"


@dataclass(frozen=True)
class Profile:
    backend: str
    frames: int
    records: tuple[Record, ...]

    @property
    def ms_per_frame(self) -> float:
        return sum(r.us for r in self.records) / 1000 / self.frames


_PART = re.compile(r"([A-Za-z0-9.-]+)/(" + "|".join(PARTS) + r")/")


def part_in(text: str) -> str | None:
    """The first ``<model>/<part>`` named anywhere in ``text``: runtimes build the names of the
    nodes they fuse or insert from the export's names (``X_abcd_aBcd16b_<consumer>``)."""
    found = _PART.search(text)
    return f"{found.group(1)}/{found.group(2)}" if found else None


def attribute(candidates: Iterable[str]) -> str:
    """The part named by the first candidate name that names one, else "other"."""
    return next((p for p in map(part_in, candidates) if p), "other")


def onnx_values(graph: Path) -> dict[str, str]:
    """Every value name of the export → the name of the node that makes it. ONNX Runtime names
    the nodes it rewrites after their output (``getitem_234_nchwc`` for a Conv in NCHWc layout)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return {out: node.name for node in model.graph.node for out in node.output}


def ort_part(node: str, values: dict[str, str]) -> str:
    if part := part_in(node):
        return part
    # The longest value name the runtime's name starts with (its own suffix after it).
    prefixes = [v for v in values if node.startswith(v)]
    return attribute([values[max(prefixes, key=len)]]) if prefixes else "other"


def ort_records(trace: Sequence[dict], values: dict[str, str], skip_runs: int = 1) -> tuple[int, list[Record]]:
    """(runs counted, per-node kernel times) from an ORT profile, without the first ``skip_runs`` runs."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session"
                  and e.get("name") == "model_run")[skip_runs:]
    totals: dict[tuple[str, str, str], float] = defaultdict(float)
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= e["ts"] <= end for start, end in runs):
            continue
        args = e.get("args", {})
        key = (e["name"][: -len("_kernel_time")], args.get("op_name", "?"), args.get("provider", ""))
        totals[key] += float(e["dur"])
    return len(runs), [Record(n, o, k, us, ort_part(n, values)) for (n, o, k), us in totals.items()]


def profile_ort(graph: Path, frames: Sequence[np.ndarray], threads: int = 0) -> Profile:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for frame in [frames[0], *frames]:  # the first run is skipped: allocations
            session.run(None, {name: frame[None]})
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs, records = ort_records(trace, onnx_values(graph))
    return Profile("onnxruntime fp32", runs, tuple(records))


def ov_records(infos: Iterable[object], parts: dict[str, str]) -> list[Record]:
    """Records of one OpenVINO ``get_profiling_info()``; nodes that did not run are left out."""
    out = []
    for info in infos:
        us = info.real_time.total_seconds() * 1e6  # type: ignore[attr-defined]
        if us > 0:
            name = info.node_name  # type: ignore[attr-defined]
            out.append(Record(name, info.node_type, info.exec_type, us,  # type: ignore[attr-defined]
                              parts.get(name, attribute([name]))))
    return out


def ov_parts(runtime_model: object, depth: int = 3) -> dict[str, str]:
    """Each node of OpenVINO's runtime graph → its part: from its name, the original layers
    fused into it, else the nearest consumer's or producer's (OpenVINO names what it makes of
    ArgMax ``TopK_518``, with nothing of the export left in the name)."""
    ops = {op.get_friendly_name(): op for op in runtime_model.get_ordered_ops()}  # type: ignore[attr-defined]

    def own(op: object) -> list[str]:
        rt = op.get_rt_info()  # type: ignore[attr-defined]
        fused = rt["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in rt else []
        return [op.get_friendly_name(), *fused]  # type: ignore[attr-defined]

    def neighbours(op: object) -> list[object]:
        after = [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]  # type: ignore[attr-defined]
        before = [i.get_source_output().get_node() for i in op.inputs()]  # type: ignore[attr-defined]
        return after + before

    parts = {}
    for name, op in ops.items():
        frontier, part = [op], "other"
        for _ in range(depth + 1):
            part = attribute(n for o in frontier for n in own(o))
            if part != "other":
                break
            frontier = [n for o in frontier for n in neighbours(o)]
        parts[name] = part
    return parts


def profile_openvino(graph: Path, frames: Sequence[np.ndarray], precision: str) -> Profile:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
              "CPU_DENORMALS_OPTIMIZATION": True, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    compiled = ov.Core().compile_model(str(graph), "CPU", config)
    parts = ov_parts(compiled.get_runtime_model())
    request = compiled.create_infer_request()
    request.infer({0: frames[0][None]})  # warm-up
    totals: dict[tuple[str, str, str], float] = defaultdict(float)
    for frame in frames:
        request.infer({0: frame[None]})
        for r in ov_records(request.get_profiling_info(), parts):
            totals[(r.node, r.op, r.kernel, r.part)] += r.us
    return Profile(f"openvino {precision}", len(frames),
                   tuple(Record(n, o, k, us, part) for (n, o, k, part), us in totals.items()))


def by_key(profile: Profile, key: str) -> list[tuple[str, float]]:
    """(key value, µs) summed over records, largest first; ``key``: op, kernel, node or part."""
    totals: dict[str, float] = defaultdict(float)
    for r in profile.records:
        totals[getattr(r, key)] += r.us
    return sorted(totals.items(), key=lambda kv: -kv[1])


def part_totals(profile: Profile) -> dict[str, float]:
    """ms per frame of the networks, of pre- and post-processing, and of runtime-inserted nodes."""
    totals = {"network": 0.0, "pre/post-processing": 0.0, "other": 0.0}
    for r in profile.records:
        part = r.part.rpartition("/")[2]
        group = "network" if part == "net" else "pre/post-processing" if part in ("pre", "post") else "other"
        totals[group] += r.us / 1000 / profile.frames
    return totals


def table(profile: Profile, key: str, top: int) -> str:
    total = sum(r.us for r in profile.records) or 1.0
    rows = by_key(profile, key)
    lines = [f"| {key} | share | ms/frame |", "|---|---:|---:|"]
    for value, us in rows[:top]:
        lines.append(f"| {value} | {100 * us / total:.1f} % | {us / 1000 / profile.frames:.2f} |")
    if len(rows) > top:
        rest = sum(us for _, us in rows[top:])
        lines.append(f"| ({len(rows) - top} more) | {100 * rest / total:.1f} % | {rest / 1000 / profile.frames:.2f} |")
    return "\n".join(lines)


def report(profile: Profile, top: int) -> str:
    parts = part_totals(profile)
    summary = ", ".join(f"{k} {v:.2f} ms ({100 * v / profile.ms_per_frame:.0f} %)" for k, v in parts.items())
    return "\n\n".join([
        f"### {profile.backend}: {profile.ms_per_frame:.1f} ms/frame of kernels over {profile.frames} frames",
        f"By part: {summary}", table(profile, "part", top), table(profile, "op", top),
        table(profile, "kernel", min(top, 10)), table(profile, "node", top)])


def read_frames(video: Path, count: int) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [np.ascontiguousarray(f.to_ndarray(format="rgb24"))
                for _, f in zip(range(count), container.decode(video=0))]


def open_backend(graph: Path, backend: str) -> Any:
    """The engine's own backend on ``graph``: ort-fp32, ov-bf16 (one frame at a time, as
    ``pipeline_throughput.py`` measures) or ov-bf16-pipelined (its streams kept busy, as the pipeline does)."""
    from segengine.backends.base import BackendOptions
    from segengine.backends.onnxruntime import OnnxRuntimeBackend
    from segengine.backends.openvino import OpenVinoBackend
    from segengine.graph.spec import GraphSpec

    spec = GraphSpec.read_file(graph)
    if backend == "ort-fp32":
        return OnnxRuntimeBackend(graph, spec)
    return OpenVinoBackend(graph, spec, BackendOptions(precision="bf16"))


def time_frames(b: Any, frames: Sequence[np.ndarray], pipelined: bool) -> float:
    """Seconds for ``frames`` through backend ``b``."""
    start = time.perf_counter()
    if pipelined:
        for frame in frames:
            if len(b._pending) >= b.depth:
                b.collect()
            b.submit(frame)
        while b._pending:
            b.collect()
    else:
        for frame in frames:
            b.infer(frame)
    return time.perf_counter() - start


def compare_fps(graphs: Sequence[Path], frames: Sequence[np.ndarray], runs: int, chunk: int = 10) -> str:
    """Bare fps of each graph per backend. All graphs stay open and take turns every ``chunk`` frames
    (the order flipping each turn), so a neighbour's load on a shared machine falls on all alike."""
    lines = ["| backend | graph | fps per run | fps (all runs) | vs first |", "|---|---|---|---:|---:|"]
    for backend in ("ort-fp32", "ov-bf16", "ov-bf16-pipelined"):
        opened = [open_backend(g, backend) for g in graphs]
        for b in opened:
            b.infer(frames[0])  # warm-up
        seconds = np.zeros((runs, len(graphs)))
        turn = 0
        for run in range(runs):
            for start in range(0, len(frames), chunk):
                order = range(len(graphs)) if turn % 2 == 0 else reversed(range(len(graphs)))
                for i in order:
                    seconds[run, i] += time_frames(opened[i], frames[start:start + chunk], "pipelined" in backend)
                turn += 1
        for b in opened:
            b.close()
        total = runs * len(frames) / seconds.sum(axis=0)
        for i, graph in enumerate(graphs):
            per_run = ", ".join(f"{len(frames) / t:.2f}" for t in seconds[:, i])
            lines.append(f"| {backend} | {graph.name} | {per_run} | {total[i]:.2f} | {total[i] / total[0]:.2f}x |")
    return "\n".join(lines)


def profile(graph: Path, frames: Sequence[np.ndarray], backend: str) -> Profile:
    """``backend``: ort, ov-fp32 or ov-bf16."""
    return profile_ort(graph, frames) if backend == "ort" else profile_openvino(graph, frames, backend.split("-", 1)[1])


def least_disturbed(graphs: Sequence[Path], frames: Sequence[np.ndarray], backend: str,
                    runs: int) -> dict[Path, tuple[Profile, list[float]]]:
    """Each graph profiled ``runs`` times, the graphs alternating (a shared machine is noisy):
    per graph the least disturbed run (smallest total: a neighbour's load only ever adds), with
    every run's total."""
    done: dict[Path, list[Profile]] = defaultdict(list)
    for _ in range(runs):
        for graph in graphs:
            done[graph].append(profile(graph, frames, backend))
    out = {}
    for graph, profiles in done.items():
        ranked = sorted(profiles, key=lambda p: p.ms_per_frame)
        out[graph] = (ranked[0], [p.ms_per_frame for p in profiles])
    return out


def summary(results: dict[str, dict[Path, tuple[Profile, list[float]]]]) -> str:
    lines = ["| backend | graph | kernels ms/frame (least disturbed run; all runs) | network ms | pre/post ms "
             "| other ms |",
             "|---|---|---|---:|---:|---:|"]
    for backend, per_graph in results.items():
        for graph, (p, totals) in per_graph.items():
            parts = part_totals(p)
            lines.append(f"| {backend} | {graph.name} | {p.ms_per_frame:.1f} ({', '.join(f'{t:.1f}' for t in totals)}) "
                         f"| {parts['network']:.1f} | {parts['pre/post-processing']:.1f} | {parts['other']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="road")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--backends", default="ort,ov-fp32,ov-bf16")
    parser.add_argument("--graph", type=Path, nargs="+",
                        help="profile these ONNX files (alternating) instead of the preset's cached graph")
    parser.add_argument("--fps", type=Path, nargs="+", help="compare these graphs' bare fps instead")
    parser.add_argument("--runs", type=int, default=1, help="runs per graph and backend (the least disturbed is shown)")
    args = parser.parse_args()
    frames = read_frames(args.video, args.frames)
    if args.fps:
        table_ = compare_fps(args.fps, frames, args.runs)
        print(f"{len(frames)} frames of {args.video.name}, {args.runs} runs\n\n{table_}")
        return
    graphs = args.graph
    if graphs is None:
        from segengine.graph.cache import cached_graph

        graphs = [cached_graph(args.preset, frames[0].shape[:2])]
    print(f"{', '.join(g.name for g in graphs)}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]} "
          f"of {args.video.name}, {args.runs} run(s) each\n")
    results = {b: least_disturbed(graphs, frames, b, args.runs) for b in args.backends.split(",")}
    for per_graph in results.values():
        for graph, (p, _) in per_graph.items():
            print(f"## {graph.name}\n\n{report(p, args.top)}\n")
    print(summary(results))


if __name__ == "__main__":
    main()
