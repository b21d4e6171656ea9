"""Builds the sinks a run asked for, checking the outputs before any frame is read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segengine.errors import ConfigError
from segengine.sinks.base import Sink, finish
from segengine.sinks.images import ImageFolderSink
from segengine.sinks.jsonl import JsonlSink, MaskChoice
from segengine.sinks.outputs import check_outputs
from segengine.sinks.video import CONTAINERS, VideoSink
from segengine.sinks.window import WindowSink
from segengine.types import SourceInfo

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _check_video_path(output: Path) -> None:
    """A video output must name a video file. Folders and suffix-less names are refused rather
    than guessed at: frames as images have their own option (image_dir / --images-out)."""
    suffix = output.suffix.lower()
    if suffix in CONTAINERS:
        return
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; give a video file such as {output / 'out.mp4'}, "
                          "or use --images-out to write frames as images")
    if suffix in _IMAGE_SUFFIXES:
        raise ConfigError(f"--output {output} is an image name; use --images-out FOLDER to write frames as images")
    hint = f"no suffix: did you mean {output}.mp4?" if not suffix else f"{suffix!r} is not a video container"
    raise ConfigError(f"--output {output}: {hint} (supported: {', '.join(CONTAINERS)})")


def open_sinks(output: Path | None, json: Path | None, show: bool, image_dir: Path | None,
               info: SourceInfo, json_masks: MaskChoice = "instances", *, inputs: Sequence[Path] = (),
               overwrite: bool = False) -> list[Sink]:
    """Every requested sink, opened. If one cannot open, those already opened are aborted
    (leaving no stray files) and its error is raised. ``json_masks``: which masks the JSON lines
    carry (the maps' RLE is most of their cost, so only where asked). ``inputs``: the files the
    source reads, which no output may be; an existing output is refused unless ``overwrite``."""
    if output is not None:
        _check_video_path(output)
    check_outputs({"--output": output, "--json": json}, inputs, overwrite=overwrite,
                  folders={"--images-out": image_dir})
    # Most likely to fail and creating nothing first.
    makers = []
    if show:
        makers.append(lambda: WindowSink(f"segengine: {info.name}"))
    if output is not None:
        makers.append(lambda: VideoSink(output, info))
    if image_dir is not None:
        makers.append(lambda: ImageFolderSink(image_dir))
    if json is not None:
        makers.append(lambda: JsonlSink(json, masks=json_masks))
    sinks: list[Sink] = []
    try:
        for make in makers:
            sinks.append(make())
    except BaseException:
        for sink in reversed(sinks):
            finish(sink, failed=True)
        raise
    return sinks
