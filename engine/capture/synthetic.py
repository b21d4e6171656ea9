"""A deterministic test source: a flat road scene with coloured boxes at constant velocity.

Every frame is a pure function of (size, fps, seed, index), and ``boxes(index)`` gives the
ground truth, so tracker and pipeline tests can check exact answers. Colours are large flat
areas far apart in hue, so they survive H.264/JPEG (4:2:0 chroma) round trips.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from segengine.capture.base import SourceStatus, SourceTimeout
from segengine.errors import ConfigError, EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

# RGB, saturated and distinct from the greys/greens of the background.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40), (40, 90, 230), (240, 210, 40), (200, 50, 200), (40, 200, 200), (250, 140, 30))
SKY, GRASS, ROAD, PAINT = (135, 170, 205), (70, 120, 60), (75, 75, 80), (235, 235, 235)
_SPAN = 100  # frames an endless source keeps its boxes fully in view before they wrap
# Bounds on what a synthetic:// URI may ask for: a typo like width=100000 is an error, not 28 GiB.
MIN_SIDE, MAX_SIDE, MAX_PIXELS = 16, 8192, 7680 * 4320
MAX_FPS, MAX_FRAMES, MAX_SEED = 1000, 10**9, 2**64 - 1


@dataclass(frozen=True)
class MovingBox:
    """Top-left (x0, y0) at frame 0, size (w, h) and velocity (vx, vy) in pixels per frame."""

    x0: float
    y0: float
    w: int
    h: int
    vx: float
    vy: float
    colour: tuple[int, int, int]


def _background(width: int, height: int) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    horizon = int(height * 0.4)
    img[:horizon] = SKY
    img[horizon:] = GRASS
    corners = [[width * 0.42, horizon], [width * 0.58, horizon], [width, height], [0, height]]
    road = np.array(corners, np.int32)
    cv2.fillPoly(img, [road], ROAD)
    for k in range(4):  # dashed centre line: flat blocks, no thin anti-aliased strokes
        y1 = horizon + (height - horizon) * (2 * k + 1) // 8
        y2 = horizon + (height - horizon) * (2 * k + 2) // 8
        half = max(1, int(width * (0.004 + 0.01 * (y2 - horizon) / (height - horizon))))
        img[y1:y2, width // 2 - half:width // 2 + half] = PAINT
    return img


def _make_boxes(width: int, height: int, frames: int | None, count: int, seed: int) -> tuple[MovingBox, ...]:
    """One box per horizontal band of the road, alternating direction, centred at mid-run, with
    speeds that keep it fully in view for the whole run (or ``_SPAN`` frames when endless)."""
    rng = np.random.default_rng(seed)
    span = max(frames or _SPAN, 1)
    top = int(height * 0.45)
    band = (height - top) / count
    out = []
    for k in range(count):
        w = max(2, int(width * rng.uniform(0.12, 0.2)))
        h = max(2, int(band * 0.6))
        speed = rng.uniform(0.3, 0.8) * (width - w) / span
        vx = speed if k % 2 == 0 else -speed
        vy = rng.uniform(-0.15, 0.15) * band / span
        x_mid = (width - w) / 2 + rng.uniform(-0.1, 0.1) * (width - w) * 0.2
        y_mid = top + band * k + (band - h) / 2
        out.append(MovingBox(x0=x_mid - vx * span / 2, y0=y_mid - vy * span / 2, w=w, h=h,
                             vx=vx, vy=vy, colour=COLOURS[k % len(COLOURS)]))
    return tuple(out)


class SyntheticSource:
    """``frames=None`` runs forever. ``live=True`` paces reads to ``fps`` on the wall clock, like a
    camera, so latest-frame policies can be tested; otherwise frames come as fast as asked."""

    def __init__(self, width: int = 640, height: int = 360, fps: float | Fraction = 25,
                 frames: int | None = 100, seed: int = 0, *, live: bool = False, objects: int = 3) -> None:
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
            raise ConfigError(f"synthetic size must be {MIN_SIDE}..{MAX_SIDE} on each side and at most "
                              f"{MAX_PIXELS // 1_000_000} MP (7680×4320), got {width}×{height}")
        if frames is not None and not 0 <= frames <= MAX_FRAMES:
            raise ConfigError(f"synthetic frames must be 0..{MAX_FRAMES} or None (endless), got {frames}")
        if not 1 <= objects <= len(COLOURS):
            raise ConfigError(f"synthetic objects must be 1..{len(COLOURS)}, got {objects}")
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"synthetic seed must be 0..2**64-1, got {seed}")
        try:
            rate = Fraction(fps) if isinstance(fps, (int, Fraction)) else Fraction(str(fps))
        except (TypeError, ValueError):
            rate = Fraction(0)  # nan, inf, text: reported below
        if not 0 < rate <= MAX_FPS:
            raise ConfigError(f"synthetic fps must be a positive number up to {MAX_FPS}, got {fps!r}")
        self._size, self._fps, self._frames = (height, width), rate, frames
        self._info = SourceInfo(name=f"synthetic://{width}x{height}@{fps}", live=live, size=(height, width),
                                fps=rate, frame_count=frames, time_base=1 / rate)
        self.objects = _make_boxes(width, height, frames, objects, seed)
        self._background: np.ndarray | None = None  # drawn at the first frame: building allocates nothing big
        self._closed = threading.Event()  # set by close(); wakes a paced read at once
        self._opened_at: float | None = None
        self._index = 0

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def status(self) -> SourceStatus:
        ended = self._frames is not None and self._index >= self._frames
        state = "closed" if self._closed.is_set() else "ended" if ended else \
            "streaming" if self._opened_at is not None else "idle"
        return SourceStatus(state=state, frames=self._index)

    def boxes(self, index: int) -> np.ndarray:
        """Ground truth at ``index``: float32 (objects, 4) xyxy in pixels, clipped to the frame,
        row k always object k. Boxes wrap around the edges only on endless runs."""
        h, w = self._size
        out = np.empty((len(self.objects), 4), np.float32)
        for k, b in enumerate(self.objects):
            x = (round(b.x0 + b.vx * index) + b.w) % (w + b.w) - b.w  # stays in [-b.w, w)
            y = (round(b.y0 + b.vy * index) + b.h) % (h + b.h) - b.h
            out[k] = (max(x, 0), max(y, 0), min(x + b.w, w), min(y + b.h, h))
        return out

    def image(self, index: int) -> np.ndarray:
        """The RGB frame at ``index`` (a new array: frames are handed to other threads)."""
        if self._background is None:
            self._background = _background(self._size[1], self._size[0])
        img = self._background.copy()
        for b, (x1, y1, x2, y2) in zip(self.objects, self.boxes(index).astype(int)):
            img[y1:y2, x1:x2] = b.colour
        return img

    def open(self) -> None:
        if self._closed.is_set():
            raise SourceError(f"{self._info.name}: source was closed; make a new one")
        if self._opened_at is None:
            self._opened_at = time.monotonic()

    def read(self, timeout: float) -> Frame:
        if self._opened_at is None or self._closed.is_set():
            raise SourceError(f"{self._info.name}: " + ("source is closed" if self._closed.is_set()
                                                        else "call open() before read()"))
        if self._frames is not None and self._index >= self._frames:
            raise EndOfStream(f"{self._info.name}: end after {self._frames} frames")
        if self._info.live:
            self._wait_until(self._opened_at + float(self._index / self._fps), timeout)
        frame = Frame(image=self.image(self._index), index=self._index,
                      pts=float(self._index / self._fps), captured_at=time.monotonic())
        self._index += 1
        return frame

    def _wait_until(self, due: float, timeout: float) -> None:
        wait = due - time.monotonic()
        if wait <= 0:
            return
        if self._closed.wait(min(wait, timeout)):
            raise SourceError(f"{self._info.name}: source is closed")
        if wait > timeout:
            raise SourceTimeout(f"{self._info.name}: no frame within {timeout:.3f} s")

    def close(self) -> None:
        self._closed.set()
