"""The model zoo: which families exist, and where each one's weights are found.

Weights resolve in this order: an explicit path → the user cache → a mirror folder →
a download from the card's URL into the cache (progress bar, sha256 checked).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import torch

from segengine.download import download, sha256_of
from segengine.errors import ConfigError, ModelError
from segengine.models.card import ModelCard

FAMILIES: dict[str, str] = {
    "twinlitenet": "segengine.models.twinlitenet",
    "yolov5s-seg": "segengine.models.yolov5_seg",
    "espnetv2-cityscapes": "segengine.models.espnetv2",
}


class Family(Protocol):
    CARD: ModelCard

    def load_network(self, path: Path) -> torch.nn.Module: ...


def family(name: str) -> Family:
    """The module of the model family called ``name``."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(FAMILIES)}")
    module: ModuleType = importlib.import_module(FAMILIES[name])
    return cast(Family, module)


def card(name: str) -> ModelCard:
    return family(name).CARD


def cards() -> list[ModelCard]:
    return [card(name) for name in FAMILIES]


@dataclass(frozen=True)
class WeightDirs:
    """Where weights are looked for. Built from the environment unless given."""

    cache: Path
    mirror: Path | None = None

    @classmethod
    def from_env(cls, mirror: Path | str | None = None) -> WeightDirs:
        base = os.environ.get("SEGENGINE_CACHE_DIR")
        if base:
            cache = Path(base)
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            cache = (Path(xdg) if xdg else Path.home() / ".cache") / "segengine"
        mirror = mirror or os.environ.get("SEGENGINE_MODEL_DIR") or None
        return cls(cache=cache / "models", mirror=Path(mirror) if mirror else None)


def cached_path(card: ModelCard, dirs: WeightDirs) -> Path | None:
    """The verified local copy of ``card``'s weights (cache, then mirror), or None."""
    for folder in (dirs.cache, dirs.mirror):
        if folder is None:
            continue
        candidate = folder / card.filename
        if candidate.is_file():
            actual = sha256_of(candidate)
            if actual != card.sha256:
                raise ModelError(
                    f"{candidate}: sha256 {actual} does not match {card.name}'s card ({card.sha256}). "
                    "The file is corrupt or another version: delete it and run "
                    f"`segengine models fetch {card.name}`."
                )
            return candidate
    return None


def resolve_weights(
    name: str,
    *,
    path: Path | str | None = None,
    dirs: WeightDirs | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> Path:
    """Find ``name``'s weight file, downloading it into the cache when nowhere else."""
    model_card = card(name)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such weight file for {name}")
        return path
    dirs = dirs or WeightDirs.from_env()
    if dirs.mirror is not None and not dirs.mirror.is_dir():
        raise ModelError(
            f"model mirror {dirs.mirror} does not exist; fix SEGENGINE_MODEL_DIR / --model-dir "
            "or leave it unset to use the cache and downloads"
        )
    found = cached_path(model_card, dirs)
    if found is not None:
        return found
    if not allow_download:
        raise ModelError(
            f"{model_card.filename} for {name} is neither in the cache ({dirs.cache}) nor in a mirror; "
            f"run `segengine models fetch {name}` or set SEGENGINE_MODEL_DIR"
        )
    return download(
        model_card.url,
        dirs.cache / model_card.filename,
        sha256=model_card.sha256,
        size_bytes=model_card.size_bytes,
        progress=progress,
    )


def load(name: str, *, path: Path | str | None = None, dirs: WeightDirs | None = None) -> torch.nn.Module:
    """The network ``name`` in eval mode with its pretrained weights."""
    return family(name).load_network(resolve_weights(name, path=path, dirs=dirs))
