"""Network streams through PyAV: RTSP, RTMP, HTTP(S) (files, MJPEG, HLS), SRT, UDP/RTP.

Every connection has an open and a read timeout, so a server that accepts and never
answers, or stalls mid-stream, is noticed within seconds instead of hanging the run. Live
feeds are wrapped in a ReconnectingSource; HTTP decides after connecting: a container that
knows its duration (a file, a VOD playlist) is read to its end, losslessly. URLs appear in
messages only redacted.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import av.error

from segengine.capture.base import Source, SourceOptions
from segengine.capture.pyav import PyAVSource
from segengine.capture.reconnect import ReconnectingSource
from segengine.capture.redact import Redactor
from segengine.errors import SourceError

# scheme → live: True, or None where the server's answer decides (HTTP serves files and feeds alike)
SCHEMES: dict[str, bool | None] = {"rtsp": True, "rtsps": True, "rtmp": True, "rtmps": True, "srt": True,
                                   "udp": True, "rtp": True, "tcp": True, "http": None, "https": None}
_NO_PROTOCOL_FIX = {
    "srt": "this FFmpeg build (PyAV's wheel) has no SRT support; relay the stream to RTSP or UDP (e.g. with "
           "srt-live-transmit), or install PyAV built from source against an FFmpeg with libsrt",
    "rtmps": "this FFmpeg build has no TLS for RTMP; use rtmp:// or RTSP",
    "https": "this FFmpeg build has no TLS; use http:// or install PyAV built against an FFmpeg with TLS",
    "rtsps": "this FFmpeg build has no TLS for RTSP; use rtsp://",
}


def av_options(scheme: str, options: SourceOptions) -> dict[str, str]:
    """FFmpeg's per-protocol options for a feed."""
    if scheme in ("rtsp", "rtsps"):
        return {"rtsp_transport": options.rtsp_transport}
    if scheme == "rtmp":
        return {"rtmp_live": "live"}
    return {}  # http: FFmpeg's own reconnect would hide drops from our counters; ours handles them


def network_source(url: str, options: SourceOptions) -> Source:
    """A (not yet opened) source for a stream URL."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise SourceError(f"not a network stream URL: {Redactor.for_url(url)(url)}")
    redactor = Redactor.for_url(url)
    name = redactor(url)

    def explain(exc: av.error.FFmpegError) -> SourceError:
        detail = redactor(str(exc))
        if isinstance(exc, av.error.ProtocolNotFoundError):
            return SourceError(f"cannot open {name}: {_NO_PROTOCOL_FIX.get(scheme, 'protocol not supported')}")
        if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
            return SourceError(f"cannot open {name}: the server refused the credentials "
                               f"({exc.strerror or 'unauthorized'}); check user and password in the URL")
        if isinstance(exc, ConnectionRefusedError):
            return SourceError(f"cannot open {name}: connection refused (nothing listens at that host and port)")
        if isinstance(exc, av.error.HTTPNotFoundError):
            return SourceError(f"cannot open {name}: the server has no stream at that path (404 Not Found)")
        return SourceError(f"cannot open {name}: {detail}")

    def make() -> PyAVSource:
        return PyAVSource(url, name=name, live=SCHEMES[scheme], options=av_options(scheme, options),
                          timeout=(options.open_timeout, options.read_timeout), max_pixels=options.max_pixels,
                          explain=explain)

    return ReconnectingSource(make, options, name=name)
