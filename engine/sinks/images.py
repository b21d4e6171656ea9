"""Writes each result as an image file: frame_000000.jpg, frame_000001.jpg, ..."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import cv2

from segengine.errors import ConfigError, SinkError
from segengine.types import FrameResult

_QUALITY = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], "jpeg": [cv2.IMWRITE_JPEG_QUALITY, 95],
            "webp": [cv2.IMWRITE_WEBP_QUALITY, 95]}


class ImageFolderSink:
    """One image per frame, named by the frame's index so files line up with the input's frames."""

    def __init__(self, folder: str | os.PathLike[str], ext: str = "jpg") -> None:
        self.folder = Path(folder)
        self.ext = ext.lower().lstrip(".")
        if not cv2.haveImageWriter(f"x.{self.ext}"):
            raise ConfigError(f"image folder {self.folder}: OpenCV cannot write .{self.ext} files; "
                              "use jpg, png, bmp or tiff")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise SinkError(f"cannot write images to {self.folder}: it is a file, not a folder") from exc
        except OSError as exc:
            raise SinkError(f"cannot create image folder {self.folder}: {exc.strerror or exc}") from exc
        self._params = _QUALITY.get(self.ext, [])
        self.files_written = 0

    def path_for(self, index: int) -> Path:
        return self.folder / f"frame_{index:06d}.{self.ext}"

    def write(self, result: FrameResult) -> None:
        image = result.rendered if result.rendered is not None else result.frame.image
        path = self.path_for(result.frame.index)
        # imencode + our own write, because cv2.imwrite only returns False and hides the OS error.
        ok, data = cv2.imencode(f".{self.ext}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), self._params)
        if not ok:
            raise SinkError(f"cannot encode frame {result.frame.index} as .{self.ext}")
        try:
            path.write_bytes(data)  # a numpy buffer: no extra copy
        except OSError as exc:
            path.unlink(missing_ok=True)  # a cut-off image would look like a frame; its absence is honest
            reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise SinkError(f"cannot write {path} (frame {result.frame.index}; {self.files_written} images "
                            f"written before it): {reason}") from exc
        self.files_written += 1

    def close(self) -> None:
        """Nothing is held open between frames."""
