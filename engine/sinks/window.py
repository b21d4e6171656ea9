"""Shows results in an OpenCV window; q or Esc asks the pipeline to stop."""

from __future__ import annotations

import os
import re
import sys

import cv2

from segengine.errors import SinkError
from segengine.types import FrameResult

_QUIT_KEYS = {ord("q"), ord("Q"), 27}  # 27 = Esc
_FIX = ("install opencv-python instead of opencv-python-headless "
        "(pip uninstall -y opencv-python-headless && pip install opencv-python)")


def _gui_backend() -> str | None:
    """The GUI backend OpenCV was built with, or None (the headless wheels say "GUI: NONE")."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if match is None:
        return "unknown"  # older builds do not list it: find out by trying
    return None if match.group(1).upper() == "NONE" else match.group(1)


def _has_display() -> bool:
    if not sys.platform.startswith("linux"):
        return True  # Windows and macOS always have a desktop session when a user runs this
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class WindowSink:
    """``cv2.imshow`` of ``result.rendered`` (or the bare frame) with a 1 ms ``waitKey``.

    Fails at construction, with what to do, when OpenCV has no GUI or there is no display,
    rather than at the first frame. ``closed_by_user`` turns true on q, Esc, or the window's
    close button; the pipeline reads it and stops.
    """

    def __init__(self, title: str = "segengine") -> None:
        self.title = title
        self.closed_by_user = False
        self._closed = False
        problems = []
        backend = _gui_backend()
        if backend is None:
            problems.append(f"this OpenCV ({cv2.__version__}) was built without GUI support; {_FIX}")
        if not _has_display():
            problems.append("there is no display (DISPLAY / WAYLAND_DISPLAY is not set); run it on a desktop, "
                            "with X forwarding (ssh -X), or write a video with --output instead")
        if not problems:
            # Only touched with a display present: some GUI backends abort the process without one.
            try:
                cv2.namedWindow(title, cv2.WINDOW_NORMAL)
            except cv2.error as exc:
                problems.append(f"OpenCV cannot open a window ({str(exc).strip().splitlines()[-1]}); {_FIX}")
        if problems:
            raise SinkError("cannot show a window: " + "; and ".join(problems))

    def write(self, result: FrameResult) -> None:
        if self._closed or self.closed_by_user:
            return  # imshow would reopen a window the user just closed
        image = result.rendered if result.rendered is not None else result.frame.image
        cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # frames are RGB, OpenCV shows BGR
        key = cv2.waitKey(1) & 0xFF  # also what lets the window repaint
        if key in _QUIT_KEYS or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.closed_by_user = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)  # lets the GUI loop actually remove it
        except cv2.error:
            pass  # already gone (closed with its button)
