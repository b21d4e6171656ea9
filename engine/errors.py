"""One exception tree for the whole engine.

Each class also inherits the builtin it resembles, so callers that already catch
``OSError`` or ``ValueError`` keep working (PyAV does the same).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error segengine raises on purpose."""


class SourceError(EngineError, OSError):
    """A frame source could not be opened or read."""


class EndOfStream(EngineError, EOFError):
    """A source has no more frames."""


class BackendError(EngineError, RuntimeError):
    """An inference backend failed or is unavailable."""


class ConfigError(EngineError, ValueError):
    """A setting, flag or argument is invalid."""


class ModelError(EngineError, ValueError):
    """A model file is missing, corrupt, unsafe or not what its card says."""


class DownloadError(ModelError, OSError):
    """Weights could not be fetched, or arrived with the wrong bytes."""


class SinkError(EngineError, OSError):
    """An output (video file, JSON lines, window, image folder) could not be opened or written."""


class OutOfMemory(BackendError, MemoryError):
    """The model did not fit in the GPU's (or the machine's) memory at this frame size."""
