"""Checks on a run's outputs before anything opens: never the input, never an existing file unasked.

An output that is the input (the same file, also through a symlink or a hard link) would be
overwritten while it is read. An existing output is replaced only with ``overwrite`` (the CLI's
``--overwrite``), and even then only when the run finishes (see ``staging``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from segengine.capture.images import IMAGE_EXTENSIONS
from segengine.errors import ConfigError


def input_paths(source: str) -> list[Path]:
    """The local files or folder a source URI reads (none for cameras, streams and synthetic://)."""
    if "://" in source:
        return [Path(source.split("://", 1)[1])] if source.startswith("file://") else []
    path = Path(source)
    if path.exists():
        return [path]
    if glob.has_magic(source):
        return [Path(p) for p in glob.glob(source)] + [Path(glob.escape(source)).parent]
    return []


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # same device and inode: symlinks and hard links included
    except OSError:
        return False


def check_outputs(outputs: dict[str, Path | None], inputs: Iterable[Path] = (), *, overwrite: bool = False,
                  folders: dict[str, Path | None] | None = None) -> None:
    """``outputs``: flag → file (``-`` is stdout); ``folders``: flag → output folder (image frames).
    Raises ConfigError naming the flag and the fix."""
    inputs = list(inputs)
    files = {flag: path for flag, path in outputs.items() if path is not None and str(path) != "-"}
    for flag, path in files.items():
        for source in inputs:
            if _same(path, source):
                raise ConfigError(f"{flag} {path} is the input ({source}): it would be overwritten while it is "
                                  "read; give the output another name")
        if path.is_dir():
            continue  # each sink says why a folder is no file, with its own fix
        if path.exists() and not path.is_file():
            raise ConfigError(f"{flag} {path} is not a regular file (a device or a pipe), which the finished "
                              "output would replace; give a file name (`--json -` writes to stdout)")
        if not path.parent.is_dir():
            raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist; create it first")
        if path.exists() and not overwrite:
            raise ConfigError(f"{flag} {path} already exists: add --overwrite to replace it (it is replaced only "
                              "once the run has finished), or give another name")
    names = {}
    for flag, path in files.items():
        key = os.path.realpath(path)
        if key in names:
            raise ConfigError(f"{names[key]} and {flag} are the same file ({path}); give them different names")
        names[key] = flag
    for flag, folder in (folders or {}).items():
        if folder is None:
            continue
        for source in inputs:
            images = source if source.is_dir() else source.parent if source.suffix.lower() in IMAGE_EXTENSIONS else None
            if images is not None and _same(folder, images):
                raise ConfigError(f"{flag} {folder} is where the input ({source}) is read from: frames written "
                                  "there could replace input images; choose another folder")
        if folder.is_dir() and not overwrite and any(folder.glob("frame_*")):
            raise ConfigError(f"{flag} {folder} already holds frame images: add --overwrite to replace them, "
                              "or choose another folder")
