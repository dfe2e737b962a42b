"""Checkpoints of a training run: atomic writes, validated reads, and :func:`load` for prediction.

A checkpoint is a ``torch.save`` dict tagged ``format = "pyro_ssvi.checkpoint"`` and a
``version``. It holds only tensors and plain Python values, so it is read with
``torch.load(weights_only=True)``: a foreign pickle cannot run code, it just fails with a
clear :class:`~pyro_ssvi.errors.SSVICheckpointError`.

Keys: ``config`` (the resolved run config), ``data_info`` (input shape, classes, N),
``epoch`` (completed epochs), ``guide`` (locs, rhos and mask buffers), ``model`` (BatchNorm
statistics, biases), ``optimizer``, ``scheduler``, ``svi`` (step count, surgery log),
``loader`` (its RNG and position), ``rng`` (torch, CUDA, numpy, python states), ``history``
(the per-epoch metrics rows so far).

>>> model, guide = load("outputs/run/checkpoint.pt")          # doctest: +SKIP
>>> result = predict(model, guide, x)                            # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
from omegaconf import OmegaConf

from .errors import SSVICheckpointError, SSVIConfigError
from .fileio import atomic_write

__all__ = ["FORMAT", "VERSION", "atomic_write", "get_rng_state", "load", "mismatch_detail", "read", "save", "set_rng_state"]

FORMAT = "pyro_ssvi.checkpoint"
VERSION = 1
REQUIRED = ("config", "data_info", "epoch", "guide", "model")
PathLike = Union[str, os.PathLike]


def save(path: PathLike, state: Dict[str, Any]) -> None:
    """Write ``state`` (plus the format tag and version) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def read(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The checkpoint dict at ``path``, checked for format, version and required keys.

    :raises SSVICheckpointError: missing file, truncated or non-torch file, foreign pickle,
        wrong format tag or version, missing keys. The message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise SSVICheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise SSVICheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted write?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message here advises weights_only=False, which is not what to do with a
        # file of unknown origin: say what the file is not, and stop.
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} is not a pyro_ssvi checkpoint: it is not a torch.save file of "
            "tensors and plain values. Pass the checkpoint.pt written by pyro_ssvi.train."
        ) from None
    except Exception as exc:  # torch raises many types here (RuntimeError, KeyError, EOFError, ...)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} cannot be read: the file is truncated, corrupt or not a torch.save "
            f"file ({type(exc).__name__}: {detail})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} is not a pyro_ssvi checkpoint (expected format tag {FORMAT!r}; "
            f"found {found})"
        )
    if state.get("version") != VERSION:
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} has version {state.get('version')!r}; this pyro_ssvi reads version {VERSION}"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise SSVICheckpointError(f"checkpoint {str(path)!r} lacks the keys {missing}")
    return state


def mismatch_detail(exc: Exception, lines: int = 3) -> str:
    """The informative part of a ``load_state_dict`` error on one line: torch's first line only
    says that loading failed, the next ones say which tensor and which shapes."""
    parts = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = " ".join(parts[1: 1 + lines]) if len(parts) > 1 else (parts[0] if parts else type(exc).__name__)
    more = f" (and {len(parts) - 1 - lines} more)" if len(parts) > 1 + lines else ""
    return detail + more


def get_rng_state() -> Dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`get_rng_state` output."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[torch.nn.Module, Any]:
    """``(model, guide)`` of a saved run, on ``device``, ready for :func:`pyro_ssvi.predictive.predict`.

    Rebuilds both from the config stored in the checkpoint (no data set and no training code
    needed), sets the guide's sites up with a dummy input of the stored shape, and loads the
    saved tensors. The model is in eval mode (BatchNorm uses its running statistics).
    """
    from .build import DataInfo, build_guide, build_model, setup_guide
    from .config import resolve_device

    try:
        device = resolve_device(str(device) if isinstance(device, torch.device) else device)
    except SSVIConfigError as exc:
        raise SSVIConfigError(f"pyro_ssvi.load: {exc}") from None
    state = read(path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    info = DataInfo(**{**state["data_info"], "input_shape": tuple(state["data_info"]["input_shape"])})
    model = build_model(cfg, info).to(device)
    guide = build_guide(cfg, model)
    setup_guide(guide, model, info.input_shape, device)
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except RuntimeError as exc:
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} does not match the model its config describes: {mismatch_detail(exc)}"
        ) from None
    model.eval()
    return model, guide
