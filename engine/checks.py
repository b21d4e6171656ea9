"""The one shape check of the data types: errors that name what was expected and what came."""

from __future__ import annotations

from segengine.errors import ConfigError


def check(cond: bool, what: str, expected: str, actual: object) -> None:
    if not cond:
        raise ConfigError(f"{what}: expected {expected}, got {actual}")
