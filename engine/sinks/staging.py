"""Outputs written under a temporary name beside their target, renamed into place on success.

A run that fails early, or is killed, never touches an existing file of the target's name: what
it wrote stays under ``<stem>.<random>.partial<suffix>`` in the same folder (the same filesystem,
so the final rename is atomic), with the target's suffix so players and readers still open it.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from pathlib import Path

from segengine.errors import SinkError

PARTIAL = ".partial"


def _umask() -> int:
    # os.umask can only be read by setting it; this runs once per output, before any thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_error(what: str, path: Path, exc: OSError) -> SinkError:
    """The message for an output that cannot be created, with the fix."""
    if exc.errno == errno.ENOSPC:
        return SinkError(f"cannot write {what} {path}: the disk is full; free space or choose another folder")
    if isinstance(exc, FileNotFoundError):
        return SinkError(f"cannot write {what} {path}: folder {path.parent} does not exist; create it first")
    if isinstance(exc, PermissionError):
        return SinkError(f"cannot write {what} {path}: permission denied; choose a folder you can write to")
    return SinkError(f"cannot write {what} {path}: {exc.strerror or exc}")


def check_target(target: str | os.PathLike[str], what: str, example: str = "a file name") -> Path:
    """A target the final rename may replace: no folder, and no device or pipe (as root, renaming
    onto /dev/null or /dev/full would replace the device itself)."""
    target = Path(target)
    if target.is_dir():
        raise SinkError(f"cannot write {what} {target}: it is a folder; give {example}")
    if target.exists() and not target.is_file():
        raise SinkError(f"cannot write {what} {target}: it is not a regular file (a device or a pipe); "
                        f"give {example}")
    return target


class StagedFile:
    """A new, empty file beside ``target`` to write into; ``commit()`` renames it to ``target``
    (replacing what was there), ``discard()`` removes it. Creating it proves the folder is
    writable, so a bad output fails before any frame is read."""

    def __init__(self, target: str | os.PathLike[str], what: str = "output") -> None:
        self.target = check_target(target, what)
        try:
            fd, name = tempfile.mkstemp(prefix=f"{self.target.stem}.", suffix=PARTIAL + self.target.suffix,
                                        dir=self.target.parent)
        except OSError as exc:
            raise open_error(what, self.target, exc) from exc
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make the finished output private
        os.close(fd)
        self.path = Path(name)
        self.done = False

    def commit(self) -> Path:
        os.replace(self.path, self.target)
        self.done = True
        return self.target

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.done = True


def partial_of(target: str | os.PathLike[str]) -> Path | None:
    """The newest file a run is writing (or a failed run left) for ``target``, if any: where to
    look at an output before its run has finished."""
    target = Path(target)
    found = [p for p in target.parent.glob(f"{glob.escape(target.stem)}.*{PARTIAL}{glob.escape(target.suffix)}")
             if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)
