"""A compact posterior file: only what prediction needs, in safetensors with a JSON header.

:func:`export` writes, per weight site of a :class:`~pyro_ssvi.guides.MaskedAutoNormal`:

- sparse sites: the active entries' ``loc`` and ``rho`` (``sigma = softplus(rho)``) and their
  positions, as flat int32 indices or as a packed bitmask, whichever is smaller (the bitmask
  wins above 1/32 = 3.1% density);
- dense sites and the guide's other latents: ``loc`` and ``rho`` in full;

and the model's point estimates (biases, BatchNorm), plus a header: format and version, the
model's build spec (:attr:`~pyro_ssvi.models.BayesianNetwork.spec`), the input shape, the guide's
sparsity, optional user metadata (e.g. the data normalisation) and the library versions.
:func:`load_posterior` rebuilds ``(model, guide)`` from the file alone, ready for
:func:`~pyro_ssvi.predictive.predict`: no Pyro param store, no training config. The stored
tensors are the guide's own (``rho``, not a recomputed sigma), so predictions from the loaded
posterior equal the original's bit for bit under the same seed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import pyro
import torch
from torch import Tensor

from .errors import SSVICheckpointError, SSVIConfigError
from .fileio import atomic_write

__all__ = ["FORMAT", "VERSION", "export", "load_posterior"]

FORMAT = "pyro_ssvi.posterior"
VERSION = 1
PathLike = Union[str, os.PathLike]


def _positions(mask: Tensor) -> Tuple[str, Tensor]:
    """``("index", int32 [k])`` or ``("bitmask", uint8 [ceil(n / 8)])``, whichever is smaller."""
    flat = mask.reshape(-1).cpu()
    k, n = int(flat.sum()), flat.numel()
    if 4 * k <= math.ceil(n / 8):
        return "index", flat.nonzero().squeeze(1).to(torch.int32)
    return "bitmask", torch.from_numpy(np.packbits(flat.numpy().astype(np.uint8)))


def _unpack(kind: str, stored: Tensor, shape: torch.Size) -> Tensor:
    """The bool mask of ``shape`` from :func:`_positions` output."""
    n = shape.numel()
    if kind == "index":
        flat = torch.zeros(n, dtype=torch.bool)
        flat[stored.long()] = True
    else:
        flat = torch.from_numpy(np.unpackbits(stored.numpy(), count=n).astype(bool))
    return flat.reshape(shape)


def _input_shape(guide) -> list:
    trace = guide.prototype_trace
    args = trace.nodes["_INPUT"]["args"] if trace is not None and "_INPUT" in trace.nodes else ()
    if not args or not torch.is_tensor(args[0]):
        raise SSVIConfigError("export() needs a guide set up with the model's inputs (call guide(x, y) first)")
    return list(args[0].shape[1:])


def export(model, guide, path: PathLike, metadata: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
    """Write the posterior of ``guide`` (a set-up MaskedAutoNormal) and ``model``'s point
    estimates to ``path`` (safetensors, written atomically); returns ``{"bytes": size}``.

    :param metadata: JSON-serializable extras for the header (e.g. the data normalisation).
    """
    if getattr(guide, "prototype_trace", None) is None or not hasattr(guide, "site_mask"):
        raise SSVIConfigError("export() needs a MaskedAutoNormal that is set up (trained, or called once as guide(x, y))")
    from safetensors.torch import save

    tensors: Dict[str, Tensor] = {}
    sites = {}
    for name, info in guide.sites.items():
        loc, rho = (t.detach() for t in guide.site_params(name))
        entry = {"shape": list(info.shape), "event_dim": info.event_dim, "sparse": info.sparse,
                 "num_active": info.num_active, "dtype": str(loc.dtype).replace("torch.", "")}
        if info.sparse:
            mask = guide.site_mask(name)
            kind, stored = _positions(mask)
            entry["positions"] = kind
            tensors[f"weight/{name}/positions"] = stored
            tensors[f"weight/{name}/loc"] = loc.reshape(-1)[mask.reshape(-1)].cpu()
            tensors[f"weight/{name}/rho"] = rho.reshape(-1)[mask.reshape(-1)].cpu()
        else:
            tensors[f"weight/{name}/loc"] = loc.cpu()
            tensors[f"weight/{name}/rho"] = rho.cpu()
        sites[name] = entry
    latents = {}
    for name, info in guide.latent_sites.items():
        loc, rho = guide.latent_params(name)
        tensors[f"latent/{name}/loc"] = loc.detach().cpu()
        tensors[f"latent/{name}/rho"] = rho.detach().cpu()
        latents[name] = {"shape": list(info.shape)}
    for key, value in model.state_dict().items():
        if not key.endswith("initial_weight"):  # a kept trained weight only seeds the guide
            tensors[f"model/{key}"] = value.detach().cpu().contiguous()
    header = {
        "format": FORMAT, "version": VERSION, "model_spec": getattr(model, "spec", None),
        "input_shape": _input_shape(guide), "sparsity": guide.sparsity, "sparse_1d": guide.sparse_1d,
        "dense_sites": [n for n, i in guide.sites.items() if not i.sparse], "sites": sites, "latents": latents,
        "metadata": metadata or {},
        "versions": {"pyro_ssvi": _version(), "torch": torch.__version__, "pyro": pyro.__version__},
    }
    try:
        meta = {"pyro_ssvi": json.dumps(header)}
    except TypeError as exc:
        raise SSVIConfigError(f"export(): metadata must be JSON-serializable ({exc})") from None
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write(path, lambda f: f.write(blob))
    return {"bytes": len(blob)}


def _version() -> str:
    from . import __version__

    return __version__


def _read(path: Path) -> Tuple[dict, Dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise SSVICheckpointError(f"posterior file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8: 8 + header_size]).get("__metadata__", {})
        header = json.loads(meta["pyro_ssvi"])
    except (SafetensorError, ValueError, KeyError, OverflowError, json.JSONDecodeError) as exc:
        raise SSVICheckpointError(
            f"posterior file {str(path)!r} is truncated, corrupt or not written by pyro_ssvi.export "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})"
        ) from None
    if header.get("format") != FORMAT:
        raise SSVICheckpointError(f"{str(path)!r} is not a pyro_ssvi posterior file (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise SSVICheckpointError(
            f"posterior file {str(path)!r} has version {header.get('version')!r}; this pyro_ssvi "
            f"({_version()}) reads version {VERSION}. Export it again with this version."
        )
    return header, tensors


def load_posterior(path: PathLike, model=None, device: Union[str, torch.device] = "cpu"):
    """``(model, guide)`` from a file written by :func:`export`, ready for ``predict``.

    :param model: the model to load into; default: rebuilt from the stored spec (models.mlp /
        models.resnet18). A ``bayesianize``-d network must be passed (the same architecture).
    :raises SSVICheckpointError: missing, truncated or foreign file, another version, or a model
        whose shapes differ from the stored ones.
    """
    from .build import setup_guide
    from .guides import MaskedAutoNormal
    from .models import from_spec

    path = Path(path)
    header, tensors = _read(path)
    if model is None:
        model = from_spec(header["model_spec"])
    model = model.to(device).eval()  # set-up below runs the model: BatchNorm must not learn from it
    guide = MaskedAutoNormal(model, sparsity=header["sparsity"], dense_sites=header["dense_sites"],
                             sparse_1d=header["sparse_1d"], seed=0)
    setup_guide(guide, model, header["input_shape"], device)
    stored = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    expected = {k for k in model.state_dict() if not k.endswith("initial_weight")}
    if set(stored) != expected:
        raise SSVICheckpointError(
            f"posterior file {str(path)!r} does not fit this model: point estimates "
            f"{sorted(set(stored) ^ expected)[:4]} are in one but not the other (another architecture)"
        )
    try:
        model.load_state_dict(stored, strict=False)
    except RuntimeError as exc:
        from .checkpoint import mismatch_detail

        raise SSVICheckpointError(
            f"posterior file {str(path)!r} does not fit this model (another architecture): {mismatch_detail(exc)}"
        ) from None
    _fill_guide(guide, header, tensors, path)
    return model, guide


@torch.no_grad()
def _fill_guide(guide, header: dict, tensors: Dict[str, Tensor], path: Path) -> None:
    stored_sites = header["sites"]
    if set(stored_sites) != set(guide.sites):
        raise SSVICheckpointError(
            f"posterior file {str(path)!r} has weight sites {sorted(stored_sites)}, this model {sorted(guide.sites)}: "
            "another architecture"
        )
    for name, entry in stored_sites.items():
        loc, rho = guide.site_params(name)
        if list(loc.shape) != entry["shape"]:
            raise SSVICheckpointError(
                f"posterior file {str(path)!r}: site {name!r} has shape {entry['shape']}, this model "
                f"{list(loc.shape)}: another architecture"
            )
        stored_loc, stored_rho = tensors[f"weight/{name}/loc"], tensors[f"weight/{name}/rho"]
        if entry["sparse"]:
            mask = _unpack(entry["positions"], tensors[f"weight/{name}/positions"], loc.shape).to(loc.device)
            guide.site_mask(name).copy_(mask)
            flat = mask.reshape(-1)
            full_loc = torch.zeros(flat.numel(), dtype=loc.dtype, device=loc.device)
            full_loc[flat] = stored_loc.to(loc)
            # Inactive rhos are placeholders (never used): the mean active rho keeps them finite.
            full_rho = torch.full_like(full_loc, float(stored_rho.mean()) if stored_rho.numel() else -6.9)
            full_rho[flat] = stored_rho.to(rho)
            loc.copy_(full_loc.reshape(loc.shape))
            rho.copy_(full_rho.reshape(rho.shape))
        else:
            loc.copy_(stored_loc.reshape(loc.shape))
            rho.copy_(stored_rho.reshape(rho.shape))
    for name in header["latents"]:
        loc, rho = guide.latent_params(name)
        loc.copy_(tensors[f"latent/{name}/loc"])
        rho.copy_(tensors[f"latent/{name}/rho"])
