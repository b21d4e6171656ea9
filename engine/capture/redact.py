"""Credentials in source URLs never reach a log line, an error message or an output file.

Two layers: patterns that catch any ``scheme://user:pass@``, password-like query parameters and
GStreamer password properties in any text (FFmpeg quotes URLs in its own errors), and the exact
secrets of one source string (also percent-decoded and as HTTP Basic base64, and those of URLs
inside a GStreamer pipeline), for messages that quote them bare.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

MASK = "***"
# The userinfo runs to the LAST @ before the authority ends (at / ? # or a blank), as in urlsplit and
# FFmpeg's av_url_split: a password with a bare @ in it (user:p@ss@host) is masked whole.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s\"<>]+@")
_SECRET_PARAMS = ("password", "passwd", "pass", "pwd", "secret", "token", "access_token", "auth", "key",
                  "api_key", "apikey", "signature", "sig", "passphrase")
_PARAM = re.compile(r"(?i)(?P<name>[?&;](?:" + "|".join(_SECRET_PARAMS) + r")=)[^&#\s'\"<>]*")
# GStreamer elements take passwords as properties: rtspsrc/souphttpsrc user-pw=, proxy-pw=; srtsrc passphrase=
# (not after ? & ;: that is a query parameter, masked by _PARAM).
_PROPERTY = re.compile(r"(?i)(?<![\w?&;-])(?P<name>(?:user-pw|proxy-pw|passphrase|password|passwd)\s*=\s*)"
                       r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s!\"'<>]+)")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>!]+")
_MIN_SECRET = 4  # shorter secrets are left to the patterns: masking every "ab" would mangle text


def redact(text: str) -> str:
    """``text`` with every URL's user:password, every password-like query value and every
    GStreamer password property masked."""
    text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    text = _PARAM.sub(lambda m: m["name"] + MASK, text)
    return _PROPERTY.sub(lambda m: m["name"] + MASK, text)


def _url_secrets(url: str) -> set[str]:
    """The password of ``url`` (as written, decoded, and as HTTP Basic) and its password-like query values.

    Split by hand, as urlsplit splits (the authority ends at the first / ? #, the userinfo at its last
    @), because urlsplit raises on the very URLs whose errors quote them (an unclosed IPv6 bracket)."""
    found: set[str] = set()
    _, sep, rest = url.partition("://")
    if not sep:
        return found
    authority = re.split("[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and len(unquote(password)) >= _MIN_SECRET:
        for u, p in ((user, password), (unquote(user), unquote(password))):
            found.update((p, base64.b64encode(f"{u}:{p}".encode(errors="surrogateescape")).decode()))
    query = rest.partition("?")[2].partition("#")[0]
    for piece in re.split("[&;]", query):  # parse_qsl would lose the raw form
        name, _, raw = piece.partition("=")
        if name.lower() in _SECRET_PARAMS:
            found.update((raw, unquote(raw), unquote_plus(raw)))
    return found


@dataclass(frozen=True)
class Redactor:
    """Masks the patterns above and, in addition, the exact secrets of one source string."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def for_url(cls, url: str) -> Redactor:
        """The secrets of ``url`` and of every URL or password property inside it (a gst:// pipeline's)."""
        found = _url_secrets(url)
        for match in _URL.finditer(url):  # URLs inside, e.g. a gst pipeline's location=rtsp://...
            found |= _url_secrets(match.group())
        for match in _PROPERTY.finditer(url):
            value = match["value"]
            found.update((value, value.strip("\"'")))
        secrets = {s for s in found if len(s) >= _MIN_SECRET and s != MASK}
        return cls(tuple(sorted(secrets, key=len, reverse=True)))  # longest first: no partial masks

    def __call__(self, text: str) -> str:
        text = redact(text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class RedactingFilter(logging.Filter):
    """A handler filter: formats each record's message once, redacted (FFmpeg's records included)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redactor(record.getMessage()), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
