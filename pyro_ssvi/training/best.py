"""The best-validation checkpoint ``best.pt``: the epoch whose validation score (``checkpoint.best_on``)
is best so far, chosen on the held-out part of the training split (``data.val_size``), never on
the test set.

``best.pt`` is a checkpoint that :func:`pyro_ssvi.load` reads (config, data info, epoch, model and
guide, plus a ``best`` record); it holds no optimizer state, so it is not resumed from. It is
written atomically whenever the score improves. The parameters of the best epoch are also kept in
memory and stored in every ``checkpoint.pt`` (``best`` key), so a resumed run, into its own
directory or another, rewrites the ``best.pt`` that belongs to the trajectory it continues (an
interrupted run may have written a later, abandoned one).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from .. import checkpoint
from ..config import BEST_NAME
from .evaluation import evaluate

__all__ = ["BestTracker", "best_base", "best_report", "restore_best", "validate_epoch"]


def _cpu_copy(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in state.items()}


class BestTracker:
    """Keeps the epoch with the best validation score.

    :param on: ``val_nll`` (lower wins) or ``val_accuracy`` (higher wins; equal accuracies go to
        the lower validation NLL). A tie on the whole key keeps the earlier epoch.
    """

    def __init__(self, on: str) -> None:
        self.on = on
        self.epoch: Optional[int] = None
        self.val: Dict[str, float] = {}  # the best epoch's validation metrics
        self.params: Dict[str, Dict[str, Any]] = {}  # its model and guide state dicts, on CPU

    def _key(self, val: Dict[str, float]) -> Tuple[float, ...]:
        if self.on == "val_accuracy":
            return (-val["accuracy"], val["nll"])
        return (val["nll"],)

    def update(self, epoch: int, val: Dict[str, float], model, guide) -> bool:
        """Record ``epoch`` if its validation metrics ``val`` beat the best so far; True if so."""
        if self.epoch is not None and not self._key(val) < self._key(self.val):
            return False
        self.epoch, self.val = epoch, dict(val)
        self.params = {"model": _cpu_copy(model.state_dict()), "guide": _cpu_copy(guide.state_dict())}
        return True

    def record(self) -> Dict[str, Any]:
        """``{"on", "epoch", "value", "val"}`` of the best epoch (JSON-ready)."""
        return {"on": self.on, "epoch": self.epoch, "value": self.val.get(self.on[len("val_"):]), "val": dict(self.val)}

    def write(self, path: Path, base: Dict[str, Any]) -> None:
        """Write ``best.pt`` atomically: ``base`` (config, data_info, normalization) with the best
        epoch's parameters."""
        checkpoint.save(path, {**base, "epoch": self.epoch, **self.params, "best": self.record()})

    def state_dict(self) -> Dict[str, Any]:
        """What a ``checkpoint.pt`` stores to continue the selection after a resume."""
        return {**self.record(), **self.params}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch, self.val = state["epoch"], dict(state["val"])
        self.params = {"model": state.get("model", {}), "guide": state.get("guide", {})}


def best_base(cfg: DictConfig, data) -> dict:
    """What best.pt holds besides the parameters (enough for :func:`pyro_ssvi.load`)."""
    return {"config": OmegaConf.to_container(cfg), "data_info": dataclasses.asdict(data.info),
            "normalization": data.normalization}


def restore_best(best: Optional[BestTracker], out: Path, base: dict) -> None:
    """Make ``out/best.pt`` the best epoch of the trajectory this run continues: rewritten from the
    resumed checkpoint's record, or removed when that has none (an interrupted run may have
    written one after its last checkpoint)."""
    if best is None:
        return
    if best.epoch is not None:
        best.write(out / BEST_NAME, base)
    else:
        (out / BEST_NAME).unlink(missing_ok=True)


def validate_epoch(cfg: DictConfig, model, guide, data, best: BestTracker, out: Path, epoch: int) -> dict:
    """The validation metrics of ``epoch`` (row keys ``val_*``); writes ``out/best.pt`` if they are the best."""
    metrics, _ = evaluate(model, guide, data, cfg, epoch, split="val")
    if best.update(epoch, metrics, model, guide):
        best.write(out / BEST_NAME, best_base(cfg, data))
    row = {f"val_{k}": v for k, v in metrics.items()}
    if "ece_top_label_l1_15bin" in metrics:
        row["val_ece"] = metrics["ece_top_label_l1_15bin"]
    return row


def best_report(best: BestTracker, history: List[dict]) -> dict:
    """``val`` (the last epoch's validation metrics) and ``best``: the best-validation epoch, its
    validation metrics and its test metrics (those its own evaluation wrote in the history)."""
    last = next(r for r in reversed(history) if "val_nll" in r)
    row = next(r for r in history if r["epoch"] == best.epoch)
    test = {k[len("test_"):]: v for k, v in row.items() if k.startswith("test_") and k != "test_ece"}
    val = {k[len("val_"):]: v for k, v in last.items() if k.startswith("val_") and k != "val_ece"}
    return {"val": val, "best": {**best.record(), "test": test, "checkpoint": BEST_NAME}}
