"""Fetch a file over HTTP(S): bounded in time and size, checked by sha256, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from segengine.errors import DownloadError

CHUNK = 1 << 16


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size_bytes: int | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``; return ``dest``.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only
    once their sha256 matches, so an interrupted or wrong download never leaves a file
    that looks finished. ``timeout`` bounds the connection and every read, so a server
    that stalls fails instead of hanging. ``size_bytes``, when known, caps what we accept.
    """
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download {url!r}: only http and https URLs are allowed")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _stream(url, out, size_bytes=size_bytes, timeout=timeout, progress=progress, name=dest.name)
        actual = sha256_of(tmp)
        if actual != sha256:
            raise DownloadError(
                f"{url}: downloaded {got} bytes whose sha256 is {actual}, expected {sha256}. "
                "The file was not kept; the server sent something else (a proxy error page, a changed "
                "release). Put the right file in a model mirror (SEGENGINE_MODEL_DIR) instead."
            )
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out, *, size_bytes: int | None, timeout: float, progress: bool, name: str) -> int:
    request = urllib.request.Request(url, headers={"User-Agent": "segengine"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or size_bytes
            limit = size_bytes if size_bytes else None
            if limit and total and total > limit:
                raise DownloadError(f"{url}: server announces {total} bytes, expected {limit}; not downloading")
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    got += len(chunk)
                    if limit and got > limit:
                        raise DownloadError(f"{url}: server sent more than the expected {limit} bytes; aborted")
                    out.write(chunk)
                    bar.update(len(chunk))
            return got
    except DownloadError:
        raise
    except TimeoutError as exc:
        raise DownloadError(f"{url}: no data for {timeout:g} s; the server stalled. Try again later.") from exc
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"{url}: cannot download ({reason}). Without network access, put the file in a "
            "model mirror folder and set SEGENGINE_MODEL_DIR or pass --model-dir."
        ) from exc
