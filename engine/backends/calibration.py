"""INT8 calibration data: real frames from the user's own video, fed batch by batch, and the table cache.

TensorRT's entropy calibrator asks for one device batch at a time; ``CalibrationFeeder`` reads
frames from any segengine source URI (``engine.capture.factory.open_source``), resizes them to
the engine's frame size when they differ, stacks them into a pinned buffer and copies them to
the device. The thin TensorRT adapter in ``tensorrt.py`` only forwards to it. The resulting
table is cached (``CalibrationTable``), so a rebuild does not calibrate again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from segengine.backends.cuda import Buffer, Memory
from segengine.capture.base import SourceTimeout
from segengine.capture.factory import open_source
from segengine.errors import ConfigError, EndOfStream


def calibration_identity(uri: str, frames: int, batch: int) -> str:
    """What the table depends on besides the model: the source (and, for files, its size and time), the count."""
    text = os.fspath(uri)
    stamp = ""
    if os.path.isfile(text):
        stat = os.stat(text)
        stamp = f"|{stat.st_size}|{int(stat.st_mtime)}"
        text = str(Path(text).resolve())
    return f"{text}{stamp}|frames={frames}|batch={batch}"


def read_frames(uri: str, frame_size: tuple[int, int], limit: int, *, timeout: float = 5.0) -> Iterator[np.ndarray]:
    """Up to ``limit`` RGB frames of ``frame_size`` (height, width) from ``uri``, evenly from its start."""
    source = open_source(uri)
    source.open()
    h, w = frame_size
    try:
        count = 0
        while count < limit:
            try:
                frame = source.read(timeout)
            except SourceTimeout:
                continue
            except EndOfStream:
                return
            image = frame.image
            if image.shape[:2] != (h, w):
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            yield image
            count += 1
    finally:
        source.close()


class CalibrationFeeder:
    """Batches of ``batch`` frames from ``uri`` on the device, one per ``next_batch`` call, until ``frames``."""

    def __init__(self, uri: str, memory: Memory, *, frame_size: tuple[int, int], batch: int = 1,
                 frames: int = 64) -> None:
        if batch < 1 or frames < batch:
            raise ConfigError(f"calibration needs at least one batch: batch {batch}, frames {frames}")
        self.uri, self.memory, self.batch, self.frames = uri, memory, batch, frames
        self.shape = (batch, *frame_size, 3)
        self.nbytes = int(np.prod(self.shape))
        self._frames = read_frames(uri, frame_size, frames)
        self._host: Buffer | None = memory.pinned(self.nbytes)
        self._device: Buffer | None = memory.device(self.nbytes)
        self._stream = memory.stream()
        self.batches = 0

    @property
    def identity(self) -> str:
        return calibration_identity(self.uri, self.frames, self.batch)

    def next_batch(self) -> int | None:
        """The device address of the next batch, or None when the frames are used up (a partial batch is dropped)."""
        if self._host is None or self._device is None:
            return None
        staging = self._host.view(np.uint8, self.shape)
        for i in range(self.batch):
            image = next(self._frames, None)
            if image is None:
                if self.batches == 0 and i == 0:
                    raise ConfigError(f"calibration source {self.uri} gave no frames")
                return None
            staging[i] = image
        self.memory.to_device(self._device, self._host, self.nbytes, self._stream)
        self._stream.synchronize()  # TensorRT reads the batch as soon as get_batch returns
        self.batches += 1
        return self._device.ptr

    def device_view(self) -> np.ndarray:
        """The device batch as an array (host memory implementation only; for tests)."""
        assert self._device is not None
        return self._device.view(np.uint8, self.shape)

    def close(self) -> None:
        for buffer in (self._host, self._device):
            if buffer is not None:
                self.memory.free(buffer)
        self._host = self._device = None
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()  # closes the source


class CalibrationTable:
    """The calibration cache file TensorRT reads before calibrating and writes after."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data or None  # an empty file means "calibrate again", not "use nothing"

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, self.path)

    @property
    def digest(self) -> str:
        data = self.read()
        return hashlib.sha256(data).hexdigest()[:16] if data else ""
