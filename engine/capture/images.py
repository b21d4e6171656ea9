"""Frames from a folder of images or a glob pattern, in natural order (2.png before 10.png)."""

from __future__ import annotations

import glob
import os
import re
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from segengine.capture.base import SourceStatus
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
GLOB_CHARS = frozenset("*?[")


def natural_key(path: Path) -> list[object]:
    """Digits compare as numbers, so frame_2 sorts before frame_10."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts]


def is_glob(text: str) -> bool:
    return any(c in GLOB_CHARS for c in text)


def list_images(folder_or_glob: str | os.PathLike[str]) -> list[Path]:
    """A folder lists its images by extension; a glob lists what it matches (the pattern is the
    user's own filter, so any file type OpenCV reads may be named by it)."""
    text = os.fspath(folder_or_glob)
    if os.path.isdir(text):
        paths = [p for p in Path(text).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        where = f"folder {text} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
    elif is_glob(text):
        paths = [Path(p) for p in glob.glob(text) if os.path.isfile(p)]
        where = f"glob pattern {text!r}"
    else:
        raise SourceError(f"image folder not found: {text} (pass an existing folder or a glob "
                          f"such as 'frames/*.png')")
    if not paths:
        raise SourceError(f"no images in {where}")
    return sorted(paths, key=natural_key)


def _to_fps(fps: float | Fraction) -> Fraction:
    try:
        rate = Fraction(fps) if isinstance(fps, (int, Fraction)) else Fraction(str(fps))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"fps must be a positive number, got {fps!r}") from exc
    if rate <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    return rate


class ImageFolderSource:
    """Reads images one by one (never all at once); every image must match the first one's size,
    because every later stage assumes one frame size per stream."""

    def __init__(self, folder_or_glob: str | os.PathLike[str], fps: float | Fraction = 25) -> None:
        self._spec = os.fspath(folder_or_glob)
        self._fps = _to_fps(fps)
        self._info = SourceInfo(name=self._spec, live=False, fps=self._fps, time_base=1 / self._fps)
        self._paths: list[Path] | None = None
        self._first: np.ndarray | None = None  # decoded at open() to learn the size; reused by read 0
        self._index = 0
        self._closed = False

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def status(self) -> SourceStatus:
        ended = self._paths is not None and self._index >= len(self._paths)
        state = "closed" if self._closed else "ended" if ended else "streaming" if self._paths else "idle"
        return SourceStatus(state=state, frames=self._index)

    def open(self) -> None:
        if self._closed:
            raise SourceError(f"{self._spec}: source was closed; make a new one to read again")
        if self._paths is not None:
            return
        paths = list_images(self._spec)
        first = self._load(paths[0])
        self._paths, self._first = paths, first
        self._info = SourceInfo(name=self._spec, live=False, size=(first.shape[0], first.shape[1]),
                                fps=self._fps, frame_count=len(paths), time_base=1 / self._fps)

    def read(self, timeout: float) -> Frame:
        """The next image; ``timeout`` is unused (a disk read does not wait on a producer)."""
        if self._paths is None or self._closed:
            raise SourceError(f"{self._spec}: source is closed" if self._closed
                              else f"{self._spec}: call open() before read()")
        if self._index >= len(self._paths):
            raise EndOfStream(f"{self._spec}: end after {len(self._paths)} images")
        path = self._paths[self._index]
        if self._index == 0 and self._first is not None:
            image, self._first = self._first, None
        else:
            image = self._load(path)
        if self._info.size != image.shape[:2]:
            h, w = self._info.size or (0, 0)
            raise ConfigError(f"{path} is {image.shape[1]}×{image.shape[0]} but {self._paths[0]} is "
                              f"{w}×{h}; every image of a sequence must have the same size (resize them)")
        frame = Frame(image=image, index=self._index, pts=float(self._index / self._fps),
                      captured_at=time.monotonic())
        self._index += 1
        return frame

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # also turns gray/alpha/16-bit into 8-bit BGR
        if bgr is None:
            raise SourceError(f"cannot read image {path} (missing, unreadable or not an image "
                              f"OpenCV can decode)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Idempotent; a closed source reads no further."""
        self._closed, self._first = True, None
