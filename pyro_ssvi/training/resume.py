"""Continuing a run from its checkpoint, with overrides applied or refused, never ignored.

``resume=<checkpoint>`` continues the run the checkpoint describes: its stored config wins.
Overrides given with it are looked at one by one: those that cannot change the run's
trajectory so far are applied (:data:`RESUMABLE`), anything else is a one-line error naming the
keys. ``train.epochs`` may grow (never below the epochs already done): the schedules (cosine
learning rate, KL warm-up, mask updates) are then laid out over the new total from the step
the run is at, so an extended run differs from one planned that long from the start.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from .. import checkpoint
from ..config import compose, flat_values, validate
from ..errors import SSVICheckpointError, SSVIConfigError

__all__ = ["RESUMABLE", "RESUME_KEYS", "RUNTIME", "restore_run", "resume_config", "touched_keys"]

#: Keys that always come from this run's command line (where and how it runs, not what).
RUNTIME = ("resume", "output_dir", "overwrite", "device", "progress", "cpu_threads")
#: Keys a resumed run may take from the command line when asked to. Prefixes end with ".".
RESUMABLE = RUNTIME + ("train.epochs", "train.loss_sync", "eval.", "checkpoint.every", "distributed.timeout_s",
                       "distributed.check_masks")
#: What a checkpoint must hold to be resumed from (besides checkpoint.REQUIRED).
RESUME_KEYS = ("optimizer", "scheduler", "svi", "loader", "rng")


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def touched_keys(cfg: DictConfig, overrides: Optional[Sequence[str]]) -> Iterable[str]:
    """The dotted keys that the command line set: each override's own key plus every key its
    composition changes (a group override such as ``model=resnet18`` changes many). Without
    ``overrides`` (``run(cfg)`` from Python), the keys where ``cfg`` differs from the defaults."""
    defaults = flat_values(OmegaConf.to_container(compose()))
    if overrides is None:
        current = flat_values(OmegaConf.to_container(cfg))
        return {k for k, v in current.items() if defaults.get(k, object()) != v}
    touched = set()
    for override in overrides:
        key = _override_key(override)
        touched.add(key)
        try:
            changed = flat_values(OmegaConf.to_container(compose([override])))
        except Exception:  # e.g. a key only valid beside another override: its own key suffices
            continue
        touched.update(k for k, v in changed.items() if defaults.get(k, object()) != v)
    return touched


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def resume_config(cfg: DictConfig, overrides: Optional[Sequence[str]] = None) -> Tuple[DictConfig, Optional[dict]]:
    """``(config of the resumed run, checkpoint state)``; ``(cfg, None)`` without ``resume``.

    :raises SSVIConfigError: overrides that would change the stored run, or fewer epochs than done.
    :raises SSVICheckpointError: the checkpoint is unreadable or lacks what resuming needs.
    """
    if not cfg.resume:
        return cfg, None
    state = checkpoint.read(cfg.resume)
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise SSVICheckpointError(
            f"checkpoint {str(cfg.resume)!r} lacks {missing}, which resuming needs; it can still be loaded for "
            "prediction with pyro_ssvi.load"
        )
    # The stored config wins; keys added to pyro_ssvi after the checkpoint was written take this
    # run's values (its defaults or overrides), so older checkpoints stay resumable.
    stored = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg)), OmegaConf.create(state["config"]))
    flat_stored, flat_cfg = flat_values(OmegaConf.to_container(stored)), flat_values(OmegaConf.to_container(cfg))
    changes = {k: flat_cfg[k] for k in touched_keys(cfg, overrides) if k in flat_cfg and flat_cfg[k] != flat_stored.get(k)}
    # A group choice (model=..., data=...) changes many keys: name its `.name` first, as the cause.
    refused = sorted((k for k in changes if not _resumable(k)), key=lambda k: (not k.endswith(".name"), k))
    if refused:
        shown = ", ".join(f"{k}={changes[k]!r} (stored {flat_stored.get(k)!r})" for k in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise SSVIConfigError(
            f"resume= continues the stored run; these overrides would change it: {shown}{more}. With resume= "
            "only train.epochs (more), eval.*, checkpoint.every, device, progress, output_dir and overwrite may "
            "change; start a new run for anything else"
        )
    for key, value in changes.items():
        OmegaConf.update(stored, key, value, merge=False)
    for key in RUNTIME:
        stored[key] = cfg[key]
    done = int(state["epoch"])
    if int(stored.train.epochs) < done:
        raise SSVIConfigError(
            f"train.epochs={stored.train.epochs} is fewer than the {done} epochs the checkpoint has done; "
            f"resume with train.epochs >= {done}"
        )
    validate(stored)
    return stored, state


def restore_run(state: dict, model, guide, optimizer, scheduler, svi, loader, path, num_steps: int) -> None:
    """Put every piece of a run back to where ``state`` (a checkpoint) left it; the learning-rate
    schedule is laid out over ``num_steps`` (more than stored when ``train.epochs`` grew)."""
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise SSVICheckpointError(
            f"checkpoint {str(path)!r} does not match this run: {checkpoint.mismatch_detail(exc)}"
        ) from None
    for schedule in scheduler.lr_lambdas:
        if hasattr(schedule, "total_steps"):
            schedule.total_steps = num_steps
    svi.load_state_dict(state["svi"])
    checkpoint.set_rng_state(state["rng"])
