"""``segengine run``: the pipeline with a progress bar, a summary, signals and exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from segengine.backends.base import BackendOptions
from segengine.capture.base import SourceOptions
from segengine.capture.factory import open_source
from segengine.capture.redact import Redactor
from segengine.errors import ConfigError, DownloadError, EngineError, ModelError
from segengine.exit_codes import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM
from segengine.graph.prepare import GraphTarget
from segengine.interval import check_interval
from segengine.logs import configure as configure_logging
from segengine.pipeline import Pipeline
from segengine.sinks.base import finish
from segengine.sinks.factory import open_sinks
from segengine.sinks.outputs import check_outputs, input_paths
from segengine.streams.ids import derive_id, expand


class Signals:
    """First SIGINT/SIGTERM: stop gracefully (sinks finalised). A second one: leave at once."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\nsegengine: {signal.Signals(signum).name}: finishing the outputs…", file=sys.stderr)
        self.pipeline.stop()


def source_options(args: argparse.Namespace) -> SourceOptions:
    return SourceOptions(open_timeout=args.open_timeout, read_timeout=args.read_timeout, stall=args.stall,
                         frozen_check=not args.no_frozen_check, reconnect=args.reconnect,
                         rtsp_transport=args.rtsp_transport, camera_backend=args.camera_backend)


def run(args: argparse.Namespace) -> int:
    from segengine.models.zoo import WeightDirs

    configure_logging(Redactor.for_url(args.source), verbose=args.verbose)
    stream_id = derive_id(args.source)
    for key in ("output", "json", "images_out"):  # {stream}, as with several streams
        value = getattr(args, key)
        if value is not None and "{" in str(value):
            setattr(args, key, Path(expand(str(value), stream_id)))
    interval = check_interval(args.interval)  # a bad value is said before anything opens
    if args.model is not None and args.preset is not None:
        raise ConfigError(f"--preset {args.preset} and --model {args.model}: choose one")
    GraphTarget(args.preset or "road", args.model, args.classes)  # --classes without --model is refused
    if args.model is not None:  # a wrong model file is said before anything starts
        from segengine.graph.custom import inspect_onnx

        inspect_onnx(args.model, args.classes)
    else:
        from segengine.graph.compose import model_names

        model_names(args.preset or "road")
    if args.json_masks is not None and args.json is None:
        raise ConfigError("--json-masks says what --json writes: add --json FILE, or leave it out")
    inputs = input_paths(args.source)
    check_outputs({"--output": args.output, "--json": args.json}, inputs, overwrite=args.overwrite,
                  folders={"--images-out": args.images_out})  # before the source opens: nothing is read twice
    source = open_source(args.source, loop=args.loop, options=source_options(args))
    source.open()
    info = source.info
    dirs = WeightDirs.from_env(args.model_dir)
    try:
        sinks = open_sinks(output=args.output, json=args.json, show=args.show, image_dir=args.images_out, info=info,
                           json_masks=args.json_masks or "instances", inputs=inputs, overwrite=args.overwrite)
    except BaseException:
        source.close()
        raise
    try:
        pipeline = Pipeline(source, preset=args.preset, model=args.model, classes=args.classes, backend=args.backend,
                            sinks=sinks, render=bool(args.output or args.show or args.images_out),
                            max_frames=args.max_frames, dirs=dirs, interval=interval,
                            options=BackendOptions(precision=args.precision, dirs=dirs))
    except BaseException:  # e.g. a backend this machine lacks: no output was touched, none is left
        for sink in sinks:
            finish(sink, failed=True)
        source.close()
        raise
    if not args.quiet:
        print(f"segengine: {info.name} → backend {pipeline.choice.name} ({pipeline.choice.reason})", file=sys.stderr)
    total = info.frame_count
    if args.max_frames:
        total = min(total, args.max_frames) if total else args.max_frames
    bar = tqdm(total=total, unit="frame", disable=True if args.quiet else None, file=sys.stderr)
    with Signals(pipeline) as signals:
        try:
            pipeline.run(on_result=lambda _r: bar.update())
        except EngineError as exc:
            if isinstance(exc, (ConfigError, ModelError)) and not isinstance(exc, DownloadError):
                raise  # bad input after all (a model that fails to build for this size): exit 2
            bar.close()
            return _failed(exc, pipeline)
        finally:
            bar.close()
    if not args.quiet:
        print(pipeline.stats.table(), file=sys.stderr)
    if signals.received is not None:
        return EXIT_SIGINT if signals.received == signal.SIGINT else EXIT_SIGTERM
    if pipeline.stats.source.damaged:
        print(f"segengine: the input was damaged: {pipeline.stats.source.line()}", file=sys.stderr)
        return EXIT_DAMAGED
    return EXIT_OK


def _failed(exc: EngineError, pipeline: Pipeline) -> int:
    """A failure while running (exit 1): what failed, how far the run got, where its output is."""
    print(f"segengine: error: {exc}", file=sys.stderr)
    print(f"segengine: {pipeline.stats.frames} frames were processed before the failure", file=sys.stderr)
    for path in pipeline.kept:
        print(f"segengine: kept what was written in {path} (the target was left as it was)", file=sys.stderr)
    return EXIT_FAILED
