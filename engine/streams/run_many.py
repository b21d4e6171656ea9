"""``segengine run A B C`` and ``segengine run --config streams.toml``: many streams through one engine.

Everything the user named is checked before any frame is read: ids, output paths (``{stream}``
filled in; two streams never write one file; no output is any stream's input), every source
opened, every sink opened. Then one :class:`MultiPipeline` runs them all, with one progress bar and,
at the end, one summary row per stream and a total. Exit status: 0 all done; 1 some stream (or the
engine) failed; 3 all done but some input was damaged; 130/143 signals.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segengine.backends.base import BackendOptions
from segengine.capture.base import Source, SourceOptions
from segengine.capture.factory import open_source
from segengine.capture.redact import Redactor
from segengine.errors import ConfigError, DownloadError, EngineError, ModelError, SourceError
from segengine.exit_codes import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM
from segengine.interval import check_interval
from segengine.logs import configure as configure_logging
from segengine.sinks.base import Sink, finish
from segengine.sinks.factory import open_sinks
from segengine.sinks.outputs import check_outputs, input_paths
from segengine.streams import config
from segengine.streams.ids import expand, unique_ids
from segengine.streams.pipeline import MultiPipeline
from segengine.streams.stream import StreamOptions
from segengine.streams.summary import table

_OUTPUTS = ("output", "json", "images_out")


def _engine(args: argparse.Namespace, parser_defaults: Mapping[str, Any], file: Mapping[str, Any]) -> dict[str, Any]:
    """What runs: the file's [engine], overridden by flags given on the command line."""
    flags = {"preset": args.preset, "model": args.model, "classes": args.classes, "backend": args.backend,
             "precision": args.precision, "max_batch": args.max_batch, "batch_timeout": args.batch_timeout,
             "model_dir": args.model_dir}
    given = {k: v for k, v in flags.items() if v != parser_defaults.get(k)}
    merged = {**flags, **file, **given}
    for key in ("model", "classes", "model_dir"):
        merged[key] = Path(merged[key]) if merged[key] is not None else None
    if merged["model"] is not None and merged["preset"] is not None:
        raise ConfigError(f"preset {merged['preset']} and model {merged['model']}: choose one")
    return merged


def _outputs(requests: list[config.StreamRequest], ids: list[str]) -> list[dict[str, Path | None]]:
    """Each stream's output paths with ``{stream}`` filled in; one file written by two streams is refused."""
    out: list[dict[str, Path | None]] = []
    seen: dict[str, str] = {}
    for request, sid in zip(requests, ids):
        paths = {}
        for key in _OUTPUTS:
            text = expand(request.settings.get(key), sid)
            if text == "-" and len(requests) > 1:
                raise ConfigError(f"--{key.replace('_', '-')} -: several streams cannot share stdout; "
                                  "give a path with {stream}, e.g. out/{stream}.jsonl")
            if text is not None and text != "-":
                resolved = str(Path(text).resolve())
                if resolved in seen:
                    raise ConfigError(f"streams {seen[resolved]} and {sid} would both write {text}: "
                                      "put {stream} in the path, e.g. out/{stream}.mp4")
                seen[resolved] = sid
            paths[key] = None if text is None else Path(text)
        out.append(paths)
    return out


def _stream_options(settings: Mapping[str, Any]) -> tuple[StreamOptions, SourceOptions]:
    options = StreamOptions(interval=check_interval(settings["interval"]), policy=settings["policy"],
                            max_frames=settings["max_frames"])
    source = SourceOptions(open_timeout=settings["open_timeout"], read_timeout=settings["read_timeout"],
                           stall=settings["stall"], frozen_check=settings["frozen_check"],
                           reconnect=settings["reconnect"], rtsp_transport=settings["rtsp_transport"],
                           camera_backend=settings["camera_backend"])
    if settings["json_masks"] not in (None, "all", "instances", "none"):
        raise ConfigError(f"json_masks {settings['json_masks']!r}: use all, instances or none")
    return options, source


def run_many(args: argparse.Namespace, parser_defaults: Mapping[str, Any]) -> int:
    from segengine.models.zoo import WeightDirs

    data = config.load_file(args.config) if args.config is not None else {}
    origin = str(args.config or "")
    requests = config.requests(args, parser_defaults, data, origin)
    secrets = {s for r in requests for s in Redactor.for_url(r.source).secrets}
    configure_logging(Redactor(tuple(sorted(secrets, key=len, reverse=True))), verbose=args.verbose)
    engine = _engine(args, parser_defaults, config.engine_settings(data, origin))
    if engine["model"] is not None:  # a wrong model file is said before anything starts
        from segengine.graph.custom import inspect_onnx

        inspect_onnx(engine["model"], engine["classes"])
    for request in requests:
        if request.settings["json_masks"] is not None and request.settings["json"] is None:
            raise ConfigError("json_masks says what json writes: give json a path too, or leave it out")
    ids = unique_ids([r.id for r in requests], [r.source for r in requests])
    outputs = _outputs(requests, ids)
    parsed = [_stream_options(r.settings) for r in requests]
    inputs = [p for r in requests for p in input_paths(r.source)]
    for paths in outputs:
        check_outputs({"--output": paths["output"], "--json": paths["json"]}, inputs, overwrite=args.overwrite,
                      folders={"--images-out": paths["images_out"]})
    opened: list[tuple[Source, list[Sink]]] = []
    unopened: dict[str, SourceError] = {}  # streams whose source failed to open: they fail alone
    try:
        for sid, request, paths, (_, source_options) in zip(ids, requests, outputs, parsed):
            source = open_source(request.source, loop=request.settings["loop"], options=source_options)
            try:
                source.open()  # a bad source is said now, before any frame of any stream is read
            except SourceError as exc:
                source.close()
                unopened[sid] = exc
                print(f"segengine: stream {sid} failed: {exc}", file=sys.stderr)
                continue
            opened.append((source, []))
            opened[-1][1].extend(open_sinks(
                output=paths["output"], json=paths["json"], show=args.show, image_dir=paths["images_out"],
                info=source.info, json_masks=request.settings["json_masks"] or "instances", inputs=inputs,
                overwrite=args.overwrite))
        dirs = WeightDirs.from_env(engine["model_dir"])
        pipeline = MultiPipeline(preset=engine["preset"], model=engine["model"], classes=engine["classes"],
                                 backend=engine["backend"], max_batch=engine["max_batch"],
                                 batch_timeout=engine["batch_timeout"], render=False, dirs=dirs,
                                 options=BackendOptions(precision=engine["precision"], dirs=dirs))
        if not opened:
            raise next(iter(unopened.values()))  # nothing can run: bad input, exit 2
    except BaseException:
        for source, sinks in opened:
            for sink in sinks:
                finish(sink, failed=True)
            source.close()
        raise
    kept = [i for i, sid in enumerate(ids) if sid not in unopened]
    for i, (source, sinks) in zip(kept, opened):
        paths = outputs[i]
        draw = bool(paths["output"] or paths["images_out"] or args.show)
        pipeline.add_source(source, stream_id=ids[i], options=parsed[i][0], sinks=sinks, render=draw)
    counts = [s.info.frame_count for s, _ in opened]
    return _run(pipeline, args, counts, [parsed[i][0] for i in kept], unopened)


def _run(pipeline: MultiPipeline, args: argparse.Namespace, counts: list[int | None], parsed: list[StreamOptions],
         unopened: Mapping[str, SourceError]) -> int:
    from segengine.run import Signals

    if not args.quiet:
        names = ", ".join(pipeline.streams)
        plural = "s" if len(counts) > 1 else ""
        print(f"segengine: {len(counts)} stream{plural} ({names}) → backend {pipeline.choice.name} "
              f"({pipeline.choice.reason}), batches of up to {pipeline.max_batch}", file=sys.stderr)
    limits = [o.max_frames for o in parsed]
    known = [min(c, m) if c and m else c or m for c, m in zip(counts, limits)]
    total = sum(known) if all(known) else None  # type: ignore[arg-type]
    bar = tqdm(total=total, unit="frame", disable=True if args.quiet else None, file=sys.stderr)
    t0 = time.monotonic()
    with Signals(pipeline) as signals:
        try:
            pipeline.run(on_result=lambda _r: bar.update())
        except EngineError as exc:
            bar.close()
            if isinstance(exc, (ConfigError, ModelError)) and not isinstance(exc, DownloadError):
                raise  # a graph that cannot be built for these frames: bad input, exit 2
            print(f"segengine: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            bar.close()
    wall = time.monotonic() - t0
    streams = pipeline.streams
    if not args.quiet:
        print(table(streams, wall, {sid: str(exc) for sid, exc in unopened.items()}), file=sys.stderr)
    for sid, stream in streams.items():
        if stream.error is not None:
            print(f"segengine: stream {sid} failed: {stream.error}", file=sys.stderr)
        for path in stream.kept:
            print(f"segengine: stream {sid}: kept what was written in {path} (the target was left as it was)",
                  file=sys.stderr)
    if signals.received is not None:
        return EXIT_SIGINT if signals.received == signal.SIGINT else EXIT_SIGTERM
    if unopened or any(s.error is not None for s in streams.values()):
        return EXIT_FAILED
    damaged = {sid: s.stats.source for sid, s in streams.items() if s.stats.source.damaged}
    for sid, status in damaged.items():
        print(f"segengine: stream {sid}: the input was damaged: {status.line()}", file=sys.stderr)
    return EXIT_DAMAGED if damaged else EXIT_OK
