"""The ``segengine`` command line."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from segengine.errors import ConfigError, EngineError, OutOfMemory, SinkError
from segengine.exit_codes import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _stack_dumps_on_sigusr1()
    previous = _unwind_on_sigterm()
    try:
        return args.func(args) or EXIT_OK
    except Terminated:
        print("segengine: terminated", file=sys.stderr)
        return EXIT_SIGTERM
    except OutOfMemory as exc:  # at start-up too (a TensorRT build): the machine's limit, not the user's input
        print(f"segengine: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except EngineError as exc:  # the commands return EXIT_FAILED themselves for failures while processing
        print(f"segengine: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("segengine: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM as an exception in the main thread, like SIGINT's KeyboardInterrupt: the commands'
    cleanup runs (a staged output is discarded, never left half-written). `run` installs its own
    handler, which finalises the outputs instead."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _unwind_on_sigterm() -> object:
    """Install the SIGTERM handler; the one it replaces, or None where signals cannot be set
    (main() called from a thread other than the main one)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


def _stack_dumps_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack: what a seemingly stuck run is doing."""
    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError):  # stderr is no real file (captured, or closed)
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segengine", description="Real-time video segmentation engine.")
    sub = parser.add_subparsers(metavar="COMMAND")

    models = sub.add_parser("models", help="list or fetch pretrained models")
    msub = models.add_subparsers(metavar="ACTION")
    p = msub.add_parser("list", help="name, task, classes, input size, licence, whether cached")
    _model_dir(p)
    p.set_defaults(func=_models_list)
    p = msub.add_parser("show", help="a model's whole card: classes, preprocessing, source, sha256, accuracy")
    p.add_argument("name")
    p.set_defaults(func=_models_show)
    p = msub.add_parser("fetch", help="download a model's weights into the cache")
    p.add_argument("name")
    _model_dir(p)
    p.set_defaults(func=_models_fetch)
    models.set_defaults(func=lambda a: (models.print_help(), EXIT_USAGE)[1])

    p = sub.add_parser("export", help="export a preset's graph, or a bare network with --raw, to ONNX")
    p.add_argument("name", help="a preset (road, street) or a model name")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--raw", action="store_true",
                   help="the bare network: upstream's preprocessed float32 input and raw outputs")
    p.add_argument("--frame-size", type=_size, default=(720, 1280), metavar="WxH",
                   help="frame size the graph takes (default 1280x720)")
    p.add_argument("--max-batch", type=_positive, default=1, metavar="N",
                   help="a dynamic batch axis of 1..N frames (default 1: a static batch of one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (once it is written)")
    _model_dir(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("run", help="segment videos, streams, cameras or image folders (one or many at once)")
    p.add_argument("source", nargs="*",
                   help="video files, image folders or globs, cameras, stream URLs, synthetic://; several run "
                        "batched through one engine, each with its own tracker and outputs")
    p.add_argument("--config", type=Path, metavar="TOML",
                   help="streams and their settings from a TOML file (see README, 'Many streams')")
    p.add_argument("-o", "--output", type=Path,
                   help="write the overlaid video here (.mp4); {stream} stands for the stream's id")
    p.add_argument("--json", type=Path, help="write one JSON line per frame here ('-' for stdout); {stream} as -o")
    p.add_argument("--json-masks", choices=("all", "instances", "none"),
                   help="which masks --json writes as RLE: all (also the maps), instances (default), none")
    p.add_argument("--images-out", type=Path, help="write overlaid frames as images into this folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (only once the run has finished; without it they are refused)")
    p.add_argument("--preset", help="road (default), street, or a single model name")
    p.add_argument("--model", type=Path, help="your own YOLO-seg or semantic ONNX model instead of a preset")
    p.add_argument("--classes", type=Path, help="class names for --model (one per line, or a JSON list)")
    p.add_argument("--backend", default="auto", help="auto (default), onnxruntime, openvino, tensorrt or torch")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                   help="auto (default: the backend's fastest that keeps accuracy), fp32, bf16 (openvino), "
                        "or int8 (openvino, after `segengine build --backend openvino --int8`)")
    p.add_argument("--show", action="store_true", help="show the overlaid video in a window")
    p.add_argument("--max-frames", type=_positive, help="stop after this many frames (of each stream)")
    p.add_argument("--max-batch", type=_positive, default=4, metavar="N",
                   help="with several streams: frames of different streams per backend call, at most [4]")
    p.add_argument("--batch-timeout", type=_seconds, metavar="S",
                   help="with several streams: how long a partial batch waits for the others "
                        "[half the fastest stream's frame interval]")
    p.add_argument("--interval", default="1", metavar="N|auto",
                   help="run the networks on every Nth frame only, tracks carried by their motion between "
                        "(1: every frame, the default); auto: as often as a live feed allows (1..8), "
                        "every frame on a file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("-v", "--verbose", action="store_true", help="also show FFmpeg's own warnings (redacted)")
    _source_flags(p)
    _model_dir(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("eval", help="per-class IoU against per-pixel labels (CamVid ids)")
    p.add_argument("name", help="a preset or model name")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--mapping", type=Path, help='JSON {"model": {"CamVid class": ["model class", ...]}}')
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default), openvino, tensorrt or torch")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                   help="auto (default), fp32, bf16 (openvino on CPUs with AVX-512 BF16 or AMX), "
                        "or int8 (openvino, after `segengine build --backend openvino --int8`)")
    _model_dir(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("track", help="re-track saved detections (MOT, MOTS or segengine JSON lines)",
                       description="Track saved detections offline; the tracks come out in the input's format.")
    p.add_argument("detections", type=Path, help="a MOT det.txt, a MOTS txt or a segengine --json file")
    p.add_argument("-o", "--output", type=Path, required=True, help="the tracks file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing tracks file (only once tracking has finished)")
    p.add_argument("--format", default="auto", choices=("auto", "mot", "mots", "jsonl"),
                   help="the input's format (default: from the name and the first line)")
    p.add_argument("--fps", type=float, help="MOT/MOTS frame rate (default: seqinfo.ini's frameRate, else 25)")
    p.add_argument("--no-smooth", action="store_true", help="write each detection's own mask, not the smoothed one")
    p.add_argument("--high", type=float, metavar="SCORE", help="confident detection score (default 0.5)")
    p.add_argument("--low", type=float, metavar="SCORE", help="detections below this score are ignored (default 0.1)")
    p.add_argument("--new-track", type=float, metavar="SCORE",
                   help="score a detection needs to start a track (default 0.6)")
    p.add_argument("--min-hits", type=_positive, metavar="N", help="detections before a track is reported (default 2)")
    p.add_argument("--max-lost", type=float, metavar="SECONDS",
                   help="how long a lost track can come back (default 1.5)")
    p.add_argument("--mask-weight", type=float, metavar="WEIGHT", help="share of mask IoU in matching (default 0.5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_track)

    p = sub.add_parser("build", help="build a TensorRT engine (NVIDIA GPU) or an INT8 OpenVINO model (CPU)",
                       description="Compile a preset's graph (or your ONNX file) with TensorRT into the engine "
                                   "cache, where `segengine run --backend tensorrt` finds it; or, with "
                                   "--backend openvino --int8, quantise it with NNCF for "
                                   "`segengine run --backend openvino --precision int8`.")
    p.add_argument("target", help="a preset (road, street), a model name, or a graph .onnx file")
    p.add_argument("--backend", default="tensorrt", choices=("tensorrt", "openvino"),
                   help="tensorrt (default) or openvino (--int8 only: NNCF post-training quantisation)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (TensorRT 10)")
    p.add_argument("--int8", action="store_true",
                   help="INT8, calibrated on real frames from --calib (TensorRT 10, or OpenVINO with NNCF)")
    p.add_argument("--calib", metavar="SOURCE", help="frames to calibrate INT8 on: your own video, folder or stream")
    p.add_argument("--calib-frames", type=_positive, default=64, metavar="N", help="frames to calibrate on [64]")
    p.add_argument("--workspace", type=float, default=2.0, metavar="GB", help="builder workspace limit [2 GB]")
    p.add_argument("--max-batch", type=_positive, default=1, metavar="N",
                   help="largest batch of the shape profile (needs a graph with a dynamic batch axis) [1]")
    p.add_argument("--frame-size", type=_size, default=(720, 1280), metavar="WxH",
                   help="frame size of the preset's graph (default 1280x720)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache holds a valid engine")
    _model_dir(p)
    p.set_defaults(func=_build)

    p = sub.add_parser("doctor", help="check Python, torch/CUDA, TensorRT, ONNX Runtime, PyAV, OpenCV, Jetson",
                       description="Report what this machine has for each path and the fix for each missing "
                                   "piece. Exit status 0, or 1 when something the CPU path needs is missing.")
    p.set_defaults(func=_doctor)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive whole number")
    return value


def _source_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sources", "files, cameras and network streams (defaults in brackets)")
    g.add_argument("--loop", action="store_true", help="replay a file or image folder forever")
    g.add_argument("--open-timeout", type=_seconds, default=10.0, metavar="S",
                   help="seconds to connect to a stream or camera [10]")
    g.add_argument("--read-timeout", type=_seconds, default=5.0, metavar="S",
                   help="seconds a stream may send nothing before it counts as dropped [5]")
    g.add_argument("--stall", type=_seconds_or_0, default=10.0, metavar="S",
                   help="reconnect a live feed after S seconds without a new frame, or with frozen "
                        "timestamps or picture; 0: never [10]")
    g.add_argument("--no-frozen-check", action="store_true",
                   help="do not treat an unchanging picture as a stall (a camera on a static scene)")
    g.add_argument("--reconnect", type=_positive, metavar="N",
                   help="give up after N failed reconnection attempts in a row [forever]")
    g.add_argument("--rtsp-transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport [tcp]")
    g.add_argument("--camera-backend", choices=("opencv", "pyav"), default="opencv",
                   help="webcams through OpenCV's V4L2 backend or PyAV's v4l2 demuxer [opencv]")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def _seconds_or_0(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _seconds(text)


def _model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", type=Path, help="a folder of model weights (a mirror); also SEGENGINE_MODEL_DIR")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    return h, w


def _dirs(args: argparse.Namespace):
    from segengine.models.zoo import WeightDirs

    return WeightDirs.from_env(args.model_dir)


def _models_list(args: argparse.Namespace) -> int:
    from segengine.models import zoo

    dirs = _dirs(args)
    rows = [("NAME", "TASK", "CLASSES", "INPUT", "LICENCE", "CACHED")]
    for card in zoo.cards():
        try:
            found = zoo.cached_path(card, dirs)
            cached = "no" if found is None else "cache" if found.parent == dirs.cache else "mirror"
        except EngineError:
            cached = "corrupt"
        rows.append((card.name, card.task, str(len(card.classes)), card.input_hw, card.licence, cached))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return EXIT_OK


def _models_show(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from segengine.models import zoo

    for key, value in asdict(zoo.card(args.name)).items():
        if key == "classes":
            value = ", ".join(value)
        if value not in ("", {}, None):
            print(f"{key + ':':<13} {value}")
    return EXIT_OK


def _models_fetch(args: argparse.Namespace) -> int:
    from segengine.models import zoo

    path = zoo.resolve_weights(args.name, dirs=_dirs(args))
    print(f"{args.name}: {path}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from segengine.graph import compose
    from segengine.sinks.outputs import check_outputs
    from segengine.sinks.staging import StagedFile

    if args.output.suffix.lower() != ".onnx":
        raise ConfigError(f"{args.output}: the output file must end in .onnx")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    check_outputs({"--output": args.output}, overwrite=args.overwrite)
    if args.raw:
        compose.model_names(args.name)  # names a preset too: say so clearly below
        if args.name in compose.PRESETS:
            raise ConfigError(f"--raw exports one bare network; {args.name} is a preset of "
                              f"{', '.join(compose.PRESETS[args.name])}")
        graph = None
    else:
        graph = compose.build_graph(args.name, args.frame_size, _dirs(args), max_batch=args.max_batch)
    # written beside the target and renamed once whole: a failed export leaves an existing file as it was
    staged = StagedFile(args.output, "the graph")
    try:
        if graph is None:
            compose.export_raw(args.name, staged.path, _dirs(args))
        else:
            compose.export_graph(graph, staged.path)
        path = staged.commit()
    finally:
        if not staged.done:
            staged.discard()
    print(f"wrote {path}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if len(args.source) == 1 and args.config is None:
        from segengine.run import run

        args.source = args.source[0]
        return run(args)
    from segengine.streams.run_many import run_many

    return run_many(args, vars(_parser().parse_args(["run"])))


def _eval(args: argparse.Namespace) -> int:
    from segengine.evaluate import evaluate, load_mapping

    report = evaluate(args.name, args.images, args.labels, mapping=load_mapping(args.mapping),
                      dirs=_dirs(args), progress=sys.stderr.isatty(), backend=args.backend, precision=args.precision)
    print(report.table())
    return EXIT_OK


_TRACKER_FLAGS = {"high": "high_score", "low": "low_score", "new_track": "new_track_score",
                  "min_hits": "min_hits", "max_lost": "max_lost", "mask_weight": "mask_weight"}


def _track(args: argparse.Namespace) -> int:
    from segengine.sinks.outputs import check_outputs
    from segengine.tracking.mask_tracker import TrackerConfig
    from segengine.tracking.offline import track_file

    check_outputs({"--output": args.output}, [args.detections], overwrite=args.overwrite)

    options = {name: getattr(args, flag) for flag, name in _TRACKER_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_smooth:
        options["smoothing"] = 0.0
    try:
        summary = track_file(args.detections, args.output, fmt=args.format, fps=args.fps,
                             config=TrackerConfig(**options), progress=False if args.quiet else None)
    except SinkError as exc:  # the tracks file could not be written (disk full): a failure while running
        print(f"segengine: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print(summary.line())
    if summary.damaged:  # done, but the input was damaged (said even with -q)
        print(f"segengine: the input was damaged: {summary.damaged}", file=sys.stderr)
        return EXIT_DAMAGED
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from segengine.backends.probe import detect
    from segengine.build import BuildRequest, build

    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"  # int8 builds allow fp16 too
    request = BuildRequest(args.target, frame_size=args.frame_size, precision=precision, calib=args.calib,
                           calib_frames=args.calib_frames, workspace_gb=args.workspace, max_batch=args.max_batch,
                           force=args.force)
    if args.backend == "openvino":
        from segengine.build_openvino import build_openvino_int8

        print(f"int8 model: {build_openvino_int8(request, _dirs(args))}")
        return EXIT_OK
    path, _ = build(request, detect(), _dirs(args))
    print(f"engine: {path}")
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from segengine.doctor import main as doctor

    return doctor()


if __name__ == "__main__":
    sys.exit(main())
