"""GPU: settle in one run (a few minutes) what the CPU stand-in tests cannot, and say it plainly.

On a machine with an NVIDIA GPU and a CUDA 12 driver, from the repository root:

    pip install -e . && pip install 'tensorrt-cu12>=10,<11' 'cuda-python>=12,<13'
    SEGENGINE_MODEL_DIR=../shared/models python benchmarks/gpu_check.py --shared ../shared

Checks; each prints one line, PASS, FAIL or SKIP with its reason, and the exit status is 1 when any
check FAILs (0 when all pass or skip):

  a  uint8-cast   a four-layer network (uint8 input → Cast to float → Conv → Relu → Conv) builds at
                  fp32 and fp16, runs, and matches ONNX Runtime
  b16 road-fp16   the road preset at 1280x720 builds and runs a highway frame three times (the first
  b   road-fp32   directly, the next two as a captured CUDA graph where one was captured); the three
                  results are identical and agree with ONNX Runtime; says whether CUDA graphs were
                  captured and, if not, why (what the runtime recorded)
  c  fp16-classes the road preset at fp16 vs ONNX Runtime on CamVid frames with COCO classes >= 9
                  (data/camvid12/images/Seq05VD_f03000.png: traffic light 9 and suitcase 28;
                  Seq05VD_f04470.png: two benches, 13): every such detection must come back
  d  int8         INT8 calibration (on the 12 CamVid frames) builds an engine that runs

Engines, timing cache and graphs go to a fresh temporary folder (``--keep DIR`` to keep them), so
every build is a real one. ``--dry-run`` prints the plan and what is missing here, and runs nothing.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HIGHWAY = Path("data/videos/udacity_vehicledet_test_video.mp4")
CAMVID = Path("data/camvid12/images")
CLASS_FRAMES = ("Seq05VD_f03000.png", "Seq05VD_f04470.png")


class Skip(Exception):
    """The check cannot run here; the message says why."""


@dataclass
class Context:
    shared: Path
    work: Path
    deadline: float
    env: object = None

    @property
    def dirs(self):
        from segengine.models.zoo import WeightDirs

        return WeightDirs(cache=self.work / "models", mirror=self.shared / "models")


# -- shared steps ---------------------------------------------------------------------------------

def _needs_gpu(ctx: Context) -> None:
    from segengine.backends.probe import detect

    ctx.env = ctx.env or detect()
    env = ctx.env
    if env.tensorrt_version is None:  # type: ignore[attr-defined]
        raise Skip("TensorRT is not installed: pip install 'tensorrt-cu12>=10,<11' 'cuda-python>=12,<13'")
    if not env.has_cuda:  # type: ignore[attr-defined]
        raise Skip(f"no usable CUDA GPU: {env.no_gpu_reason()}")  # type: ignore[attr-defined]


def _needs(ctx: Context, *paths: Path) -> None:
    missing = [str(ctx.shared / p) for p in paths if not (ctx.shared / p).exists()]
    if missing:
        raise Skip(f"shared data missing: {', '.join(missing)} (pass --shared DIR)")


def _precision(precision: str) -> None:
    from segengine.backends import tensorrt as trt_backend

    if not trt_backend.supports(precision):
        raise Skip(f"TensorRT {trt_backend.version()} has no {precision} builder flag (TensorRT 11)")


def _build(ctx: Context, graph: Path, precision: str, **calib) -> Path:
    from segengine.build import BuildRequest, build

    out = io.StringIO()
    path, _ = build(BuildRequest(str(graph), precision=precision, **calib), ctx.env, ctx.dirs, out=out)
    return path


def _run(path: Path, frames: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], str]:
    from segengine.backends.cuda import open_memory
    from segengine.backends.tensorrt import EngineRunner

    runner = EngineRunner(path, open_memory("auto"))
    try:
        return [runner.infer(frame) for frame in frames], runner.graph_report()
    finally:
        runner.close()


def _reference(graph: Path, frame: np.ndarray) -> dict[str, np.ndarray]:
    from segengine.backends.onnxruntime import OnnxRuntimeBackend
    from segengine.graph.spec import GraphSpec

    backend = OnnxRuntimeBackend(graph, GraphSpec.read_file(graph))
    try:
        return backend.infer(frame)
    finally:
        backend.close()


def _road(ctx: Context, size: tuple[int, int]) -> Path:
    from segengine.graph.cache import cached_graph

    return cached_graph("road", size, dirs=ctx.dirs)


def _highway(ctx: Context) -> np.ndarray:
    import av

    with av.open(str(ctx.shared / HIGHWAY)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def _camvid(ctx: Context, name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(ctx.shared / CAMVID / name)), cv2.COLOR_BGR2RGB)


def _map_agreement(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float((got[k] == want[k]).mean()) for k in ("drivable", "lanes") if k in want}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = np.maximum(a[:2], b[:2])
    x1, y1 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _missing_detections(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, min_class: int = 0,
                        score: float = 0.5) -> list[str]:
    """ORT's detections (class >= min_class, score > score) without a same-class TensorRT one at IoU >= 0.7."""
    missing = []
    keep = (want["scores"][0] > score) & (want["classes"][0] >= min_class)
    for box, cls in zip(want["boxes"][0][keep], want["classes"][0][keep]):
        same = got["classes"][0] == cls
        ious = [_iou(box, other) for other in got["boxes"][0][same & (got["scores"][0] > score * 0.8)]]
        if not ious or max(ious) < 0.7:
            missing.append(f"class {int(cls)} at {np.round(box).astype(int).tolist()}")
    return missing


# -- the checks -----------------------------------------------------------------------------------

def check_uint8_cast(ctx: Context) -> str:
    _needs_gpu(ctx)  # before the imports: segengine.backends.tensorrt imports TensorRT
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from segengine.backends import tensorrt as trt_backend
    from segengine.backends.build_progress import BuildProgress

    rng = np.random.default_rng(0)
    shape = (1, 3, 32, 32)
    w1, w2 = rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.1, (4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["frame"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w1"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["z"]),
             helper.make_node("Conv", ["z", "w2"], ["out"])]
    graph = helper.make_graph(nodes, "uint8_cast", [helper.make_tensor_value_info("frame", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, (1, 4, 32, 32))],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = ctx.work / "uint8_cast.onnx"
    onnx.save(model, str(path))
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"frame": frame})[0]
    said = []
    for precision in ("fp32", "fp16"):
        profile = (("frame", shape, shape, shape),)
        plan = trt_backend.build_serialized(path, precision=precision, workspace_gb=1, profile=profile,
                                            timing_cache=ctx.work / "uint8_cast.timing",
                                            progress=BuildProgress(io.StringIO(), heartbeat=0))
        engine = ctx.work / f"uint8_cast_{precision}.engine"
        engine.write_bytes(plan)
        (got,), report = _run(engine, [frame])
        error = float(np.abs(got["out"] - want).max() / (np.abs(want).max() + 1e-6))
        if error > (1e-4 if precision == "fp32" else 2e-2):
            raise AssertionError(f"{precision}: relative error {error:.2e} vs ONNX Runtime")
        said.append(f"{precision} built and matches ONNX Runtime (relative error {error:.1e})")
    return "; ".join(said)


def check_road(precision: str) -> Callable[[Context], str]:
    def check(ctx: Context) -> str:
        _needs_gpu(ctx)
        _needs(ctx, HIGHWAY, Path("models"))
        _precision(precision)
        frame = _highway(ctx)
        graph = _road(ctx, frame.shape[:2])
        start = time.monotonic()
        path = _build(ctx, graph, precision)
        built = time.monotonic() - start
        results, report = _run(path, [frame] * 3)
        for i, later in enumerate(results[1:], 2):  # frames 2 and 3 replay the graph where one was captured
            for name, value in results[0].items():
                if not np.array_equal(value, later[name]):
                    raise AssertionError(f"frame {i}'s {name} differs from frame 1's on the same input ({report})")
        agree = _map_agreement(results[0], _reference(graph, frame))
        floor = 0.995 if precision == "fp32" else 0.98
        low = {k: v for k, v in agree.items() if v < floor}
        if low:
            raise AssertionError(f"maps vs ONNX Runtime below {floor}: {low} ({report})")
        shares = ", ".join(f"{k} {v:.4f}" for k, v in agree.items())
        return f"built in {built:.0f}s, 3 frames identical, vs ONNX Runtime {shares}; {report}"

    return check


def check_fp16_classes(ctx: Context) -> str:
    _needs_gpu(ctx)
    _needs(ctx, *(CAMVID / name for name in CLASS_FRAMES), Path("models"))
    _precision("fp16")
    frames = [_camvid(ctx, name) for name in CLASS_FRAMES]
    graph = _road(ctx, frames[0].shape[:2])
    path = _build(ctx, graph, "fp16")
    results, report = _run(path, frames)
    said, missing = [], []
    for name, frame, got in zip(CLASS_FRAMES, frames, results):
        want = _reference(graph, frame)
        high = int(((want["scores"][0] > 0.5) & (want["classes"][0] >= 9)).sum())
        if high == 0:
            raise AssertionError(f"{name}: ONNX Runtime finds no class >= 9 above 0.5 (the frame no longer shows one)")
        lost = _missing_detections(got, want, min_class=9)
        missing += [f"{name}: {m}" for m in lost]
        said.append(f"{name}: {high - len(lost)}/{high} class >= 9 detections kept")
    if missing:
        raise AssertionError("fp16 lost detections of classes >= 9: " + "; ".join(missing))
    return "; ".join(said) + f"; {report}"


def check_int8(ctx: Context) -> str:
    _needs_gpu(ctx)
    _needs(ctx, CAMVID, Path("models"))
    _precision("int8")
    frame = _camvid(ctx, CLASS_FRAMES[0])
    graph = _road(ctx, frame.shape[:2])
    path = _build(ctx, graph, "int8", calib=str(ctx.shared / CAMVID), calib_frames=12)
    tables = list(path.parent.glob("calibration-*.table"))
    (got,), report = _run(path, [frame])
    agree = _map_agreement(got, _reference(graph, frame))
    shares = ", ".join(f"{k} {v:.4f}" for k, v in agree.items())
    return f"built ({len(tables)} calibration table), runs; vs ONNX Runtime {shares} (not judged); {report}"


# Most telling first: a check not started within --budget is skipped, not half run.
CHECKS: dict[str, tuple[str, Callable[[Context], str]]] = {
    "a": ("uint8-cast", check_uint8_cast),
    "b16": ("road-fp16", check_road("fp16")),
    "c": ("fp16-classes", check_fp16_classes),
    "d": ("int8", check_int8),
    "b": ("road-fp32", check_road("fp32")),
}


def _plan(ctx: Context) -> list[str]:
    """What --dry-run says: each check and what it lacks here (the GPU pieces, the shared data)."""
    data = {"a": (), "b16": (HIGHWAY,), "b": (HIGHWAY,), "c": tuple(CAMVID / n for n in CLASS_FRAMES), "d": (CAMVID,)}
    lines = []
    for key, (name, _) in CHECKS.items():
        try:
            _needs_gpu(ctx)
            _needs(ctx, *data[key])
            lack = "would run"
        except Skip as why:
            lack = f"would SKIP: {why}"
        lines.append(f"{key:>3} {name:<13} {lack}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared data folder")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"checks to run, of {','.join(CHECKS)}")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; checks not started by then SKIP")
    parser.add_argument("--keep", type=Path, help="keep engines and graphs in this folder")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what is missing; run nothing")
    args = parser.parse_args(argv)
    chosen = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in CHECKS]
    if unknown:
        parser.error(f"--only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(args.shared.resolve(), work, time.monotonic() + args.budget)
        if args.dry_run:
            print("\n".join(_plan(ctx)))
            return 0
        failed = 0
        for key in chosen:
            name, check = CHECKS[key]
            start = time.monotonic()
            try:
                if start > ctx.deadline:
                    raise Skip(f"past the {args.budget:.0f}s budget (run it alone with --only {key})")
                status, reason = "PASS", check(ctx)
            except Skip as why:
                status, reason = "SKIP", str(why)
            except Exception as exc:  # every failure is reported, then the next check runs
                status, reason = "FAIL", f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
                failed += 1
            print(f"{status} {name} ({time.monotonic() - start:.0f}s): {reason}", flush=True)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
