"""Many streams through one engine: ``MultiPipeline`` (batched inference, per-stream state), stream ids, the
TOML stream list and ``segengine run A B C``."""

from segengine.streams.pipeline import MultiPipeline
from segengine.streams.stream import Stream, StreamOptions

__all__ = ["MultiPipeline", "Stream", "StreamOptions"]
