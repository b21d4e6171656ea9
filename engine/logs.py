"""The command line's log output: one stderr handler whose every line is redacted.

Records of FFmpeg (PyAV's ``libav.*`` loggers, on with ``--verbose``) pass through the same
handler, so a password quoted by FFmpeg itself is masked too.
"""

from __future__ import annotations

import logging
import sys

import av.logging

from segengine.capture.redact import RedactingFilter, Redactor

_HANDLER = "segengine-cli"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        who = "ffmpeg" if record.name.startswith("libav") else "segengine"
        return f"{who}: {super().format(record)}"


def configure(redactor: Redactor, *, verbose: bool = False) -> logging.Handler:
    """Route warnings (and with ``verbose`` info and FFmpeg's warnings) to stderr, redacted.
    Calling it again replaces the handler it installed, never stacks another; returns it."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER)
    handler.addFilter(RedactingFilter(redactor))
    handler.setFormatter(_Format("%(message)s"))
    root.addHandler(handler)
    logging.getLogger("segengine").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("libav").setLevel(logging.WARNING)
        av.logging.set_level(av.logging.WARNING)
    return handler
