"""Credentials in source URLs never reach a log line, an error message or an output file.

Two layers: patterns that catch any ``scheme://user:pass@`` and password-like query
parameters in any text (FFmpeg quotes URLs in its own errors), and the exact secrets of one
URL (also percent-decoded and as HTTP Basic base64), for messages that quote them bare.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"<>]+@")
_SECRET_PARAMS = ("password", "passwd", "pass", "pwd", "secret", "token", "access_token", "auth", "key",
                  "api_key", "apikey", "signature", "sig", "passphrase")
_PARAM = re.compile(r"(?i)(?P<name>[?&;](?:" + "|".join(_SECRET_PARAMS) + r")=)[^&#\s'\"<>]*")
_MIN_SECRET = 4  # shorter secrets are left to the patterns: masking every "ab" would mangle text


def redact(text: str) -> str:
    """``text`` with every URL's user:password and every password-like query value masked."""
    text = _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", text)
    return _PARAM.sub(lambda m: m["name"] + MASK, text)


@dataclass(frozen=True)
class Redactor:
    """Masks the patterns above and, in addition, the exact secrets of one URL."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def for_url(cls, url: str) -> Redactor:
        try:
            parts = urlsplit(url)
            user, password = parts.username or "", parts.password
        except ValueError:
            return cls()
        found: set[str] = set()
        if password and len(unquote(password)) >= _MIN_SECRET:
            for u, p in ((user, password), (unquote(user), unquote(password))):
                found.update((p, base64.b64encode(f"{u}:{p}".encode()).decode()))  # HTTP Basic, in debug logs
        for match in _PARAM.finditer("?" + parts.query if parts.query else ""):
            value = match.string[match.end("name"):match.end()]
            found.update(v for v in (value, unquote(value)) if len(v) >= _MIN_SECRET)
        return cls(tuple(sorted(found, key=len, reverse=True)))  # longest first: no partial masks

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
