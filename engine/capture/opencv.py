"""Cameras through OpenCV: V4L2 webcams (an index or /dev/videoN) and GStreamer pipelines,
``csi://N`` on Jetson among them.

OpenCV's reads block inside the driver; a ReadGuard keeps close() from releasing the device
under a read. Timestamps are the driver's when it gives increasing ones, else the monotonic clock.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from fractions import Fraction

import cv2

from segengine.capture.base import SourceStatus
from segengine.capture.guard import ReadGuard
from segengine.capture.pyav import sane_fps
from segengine.errors import EndOfStream, SourceError
from segengine.types import Frame, SourceInfo

GSTREAMER_FIX = ("this OpenCV was built without GStreamer (the opencv-python and opencv-python-headless wheels "
                 "never have it), so GStreamer pipelines and csi:// cameras cannot be opened. Fix: use an "
                 "OpenCV built with GStreamer: on Jetson the one JetPack installs (apt install python3-opencv; "
                 "make the venv with --system-site-packages and `pip uninstall opencv-python-headless`), "
                 "elsewhere build OpenCV with -D WITH_GSTREAMER=ON. A USB camera also works as /dev/videoN")


def opencv_has_gstreamer() -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The GStreamer pipeline for a Jetson CSI camera: NVMM capture, hardware convert, BGR appsink
    that keeps only the newest buffer (latency stays bounded)."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
            f"framerate={fps}/1 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
            f"video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


class OpenCVSource:
    """Frames from ``cv2.VideoCapture(target, api)``, converted to RGB."""

    def __init__(self, target: int | str, api: int, *, name: str, live: bool = True) -> None:
        self._target, self._api = target, api
        self._info = SourceInfo(name=name, live=live)
        self._status = SourceStatus()
        self._capture: cv2.VideoCapture | None = None
        self._guard = ReadGuard(lambda: self._info.name, self._release)
        self._index = 0
        self._start = 0.0
        self._last_pts: float | None = None
        self._driver_clock = True  # until the driver's timestamps prove useless

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def status(self) -> SourceStatus:
        return self._status

    def open(self) -> None:
        if self._capture is not None:
            return
        if self._guard.closed:
            raise SourceError(f"{self._info.name}: source was closed; make a new one to read again")
        if self._api == cv2.CAP_GSTREAMER and not opencv_has_gstreamer():
            raise SourceError(f"cannot open {self._info.name}: {GSTREAMER_FIX}")
        capture = cv2.VideoCapture(self._target, self._api)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open camera {self._info.name} through OpenCV (no such device, busy, or "
                              f"no permission: check `ls -l /dev/video*` and that no other program uses it)")
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = sane_fps(Fraction(capture.get(cv2.CAP_PROP_FPS)).limit_denominator(1001))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not self._info.live else 0
        self._info = replace(self._info, size=(height, width) if width and height else None, fps=fps,
                             frame_count=count if count > 0 else None)
        self._capture, self._start = capture, time.monotonic()
        self._status = replace(self._status, state="streaming")

    def read(self, timeout: float) -> Frame:
        """The next frame; the wait is the driver's own (V4L2: seconds), ``timeout`` bounds only
        the wait for another read."""
        if self._capture is None:
            raise SourceError(f"{self._info.name}: " + ("source is closed" if self._guard.closed else
                                                        "call open() before read()"))
        with self._guard.reading(timeout):
            capture = self._capture
            if capture is None:
                raise SourceError(f"{self._info.name}: source is closed")
            ok, bgr = capture.read()
            driver_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
        if not ok or bgr is None:
            if not self._info.live:
                self._status = replace(self._status, state="ended")
                raise EndOfStream(f"{self._info.name}: end of stream after {self._index} frames")
            raise SourceError(f"{self._info.name}: the camera stopped delivering frames (unplugged?)")
        frame = Frame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index=self._index,
                      pts=self._stamp(driver_ms / 1000.0), captured_at=time.monotonic())
        self._index += 1
        self._status = replace(self._status, frames=self._index)
        return frame

    def _stamp(self, driver_s: float) -> float:
        if self._driver_clock and (driver_s < 0 or (self._last_pts is not None and driver_s <= self._last_pts)):
            self._driver_clock = False  # no or non-increasing driver timestamps: the wall clock from here on
        t = driver_s if self._driver_clock else time.monotonic() - self._start
        if self._last_pts is not None and t <= self._last_pts:
            t = self._last_pts + 1e-6
        self._last_pts = t
        return t

    def close(self) -> None:
        """Idempotent and safe from another thread: waits (bounded) for a read blocked in the driver."""
        self._status = self._status.closed()
        self._guard.close()

    def _release(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
