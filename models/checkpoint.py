"""Reading weight files safely, with errors a user can act on."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from segengine.errors import ModelError


def load_state_dict(path: Path, *, what: str) -> dict[str, torch.Tensor]:
    """Load a plain state dict with ``weights_only=True``; no code in the file ever runs.

    ``what`` names the expected content for the error message ("TwinLiteNet weights").
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weight file (expected {what}).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelError(
            f"{path}: cannot read it as {what} ({type(exc).__name__}: {_first_line(exc)}). "
            "The file is truncated, corrupt or of another kind: delete it and fetch it again "
            "with `segengine models fetch`."
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors ({what}).")
    return {str(k): v for k, v in obj.items()}


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. DataParallel's ``module.``) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, *, what: str) -> None:
    """Load ``state`` strictly into ``module``; on any mismatch name the keys and shapes that differ."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatch "
                + _few(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong)
            )
        raise ModelError(
            f"{path}: these are not {what}: {'; '.join(parts)}. "
            "Check that the file matches the model name you gave."
        )
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def _few(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
