"""Class names from the user: a `--classes` file (one name per line, or a .json list) or a model's `names` metadata.

Both are bounded before they are parsed (a file's size, the metadata's length: ``ast.literal_eval``
on a huge or deeply nested literal takes long or exhausts the parser's stack), and every name must
be printable text, since names end up in labels, JSON lines and file names.
"""

from __future__ import annotations

import ast
import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from segengine.errors import ConfigError, ModelError

ClassList = Sequence[str] | str | Path  # names, or a text file (one per line) or a JSON list
MAX_CLASSES = 65536
MAX_FILE_BYTES = 16 << 20  # far above 65536 names of any sensible length
MAX_NAMES_TEXT = 1 << 20  # the `names` metadata: Ultralytics' for 80 classes is under 2 KiB
_FORMS = "a text file has one name per line, a .json file holds a list of names"


def read_class_list(classes: ClassList) -> tuple[str, ...]:
    """The names in ``classes`` (the names themselves, or a file of them); ConfigError saying what is wrong."""
    names: object = classes
    where = f"class list {classes!s:.80}"
    if isinstance(classes, (str, Path)):
        file = Path(classes)
        where = f"class list {str(file)!r:.120}"
        names = _read_file(file, where)
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"{where}: expected a list of one or more names ({_FORMS})")
    if problem := names_problem(names):
        raise ConfigError(f"{where}: {problem} ({_FORMS})")
    return tuple(names)


def parse_names(path: Path, text: str) -> tuple[str, ...]:
    """A model's `names` metadata: "{0: 'person', 1: 'bicycle'}" or "['person', 'bicycle']"; ModelError otherwise."""
    value: object = None
    if len(text) <= MAX_NAMES_TEXT:  # checked first: the parser's cost grows with length and nesting
        try:
            value = ast.literal_eval(text)  # a literal, never code to run
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
    if isinstance(value, dict) and len(value) <= MAX_CLASSES and set(value) == set(range(len(value))):
        value = [value[i] for i in range(len(value))]
    if len(text) > MAX_NAMES_TEXT:
        problem: str | None = f"{len(text)} characters, above the {MAX_NAMES_TEXT} read"
    elif not isinstance(value, list) or not value:
        problem = "not a literal dict {0: 'name', ...} or list of names"
    else:
        problem = names_problem(value)
    if problem:
        raise ModelError(f"{path}: its `names` metadata {text!r:.80} is unusable ({problem}); "
                         "pass the class list instead")
    return tuple(value)  # type: ignore[arg-type]  # names_problem checked: a list of str


def names_problem(names: Sequence[object]) -> str | None:
    """What is wrong with ``names`` as class names, or None."""
    if len(names) > MAX_CLASSES:
        return f"{len(names)} names, above the {MAX_CLASSES} supported"
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            return f"entry {index} ({name!r:.40}) is not a non-empty name"
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
            return f"entry {index} ({name!r:.40}) holds a control character or a lone surrogate"
    return None


def _read_file(file: Path, where: str) -> object:
    try:
        size = file.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"{where}: cannot read the class list ({exc!s:.200})") from exc
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: {size} bytes, above the {MAX_FILE_BYTES >> 20} MiB a class list may have")
    try:
        text = file.read_bytes().decode("utf-8-sig")  # -sig: a BOM from Windows' Notepad is no part of the name
        if file.suffix.lower() == ".json":
            return json.loads(text)
        return [line.strip() for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, JSONDecodeError, int()'s digit limit
        raise ConfigError(f"{where}: cannot read the class list ({exc!s:.200})") from exc
    except RecursionError:  # json on "[[[[..." thousands deep
        raise ConfigError(f"{where}: cannot read the class list (nested too deeply; {_FORMS})") from None
