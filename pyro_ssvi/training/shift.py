"""Distribution shift (``eval.shift``): the final model scored on corrupted copies of the test set.

The copies are made by :mod:`pyro_ssvi.corruptions` (CIFAR-10-C's published constants, this
project's code; not the official CIFAR-10-C files) in ``[0, 1]`` pixel space, then normalised with
the run's statistics like the clean test set. Each (corruption, severity) is generated once, with
draws fixed by ``(seed, corruption, severity)``, and cached as uint8 ``[N, C, H, W]`` (0..255) in
``<data.cache_dir or ~/.cache/pyro_ssvi/shift>/``; the file name carries a fingerprint of the test
images, so another data set, subset or seed never reuses it. A cache that is unreadable or made
from other images is regenerated.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig

from ..corruptions import corrupt, select_corruptions
from ..data import ArrayDataset, default_cache_dir
from ..fileio import atomic_write
from ..metrics import classification_metrics
from .evaluation import predict_fixed

__all__ = ["SHIFT_STREAM", "ShiftSets", "shift_metrics", "shift_sets"]

log = logging.getLogger(__name__)

SHIFT_STREAM = 3  # the posterior draws of every shifted set (the same draws: differences are the data's)
_FORMAT, _VERSION = "pyro_ssvi.shift_cache", 1


class ShiftSets:
    """The corrupted copies of one test set: ``(name, severity, uint8 images)`` on iteration,
    each read from its cache file when needed (a CIFAR-sized copy is 30 MB)."""

    def __init__(self, test: ArrayDataset, names: Sequence[str], severities: Sequence[int], seed: int,
                 cache_dir: Path) -> None:
        self.test, self.names, self.severities, self.seed = test, tuple(names), tuple(severities), int(seed)
        self.cache_dir = cache_dir
        digest = hashlib.sha256()
        for part in (test.images.contiguous().cpu().numpy().tobytes(), repr((tuple(test.images.shape), test.scale))):
            digest.update(part if isinstance(part, bytes) else part.encode())
        self.fingerprint = digest.hexdigest()

    def path(self, name: str, severity: int) -> Path:
        return self.cache_dir / f"{self.test.name}-{self.fingerprint[:16]}-{name}-s{severity}-seed{self.seed}.pt"

    def _generate(self, name: str, severity: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{name}/{severity}".encode()))
        x = self.test.images.cpu().float() / float(self.test.scale)
        return (corrupt(x, name, severity, g) * 255).round().to(torch.uint8)

    def _read(self, path: Path) -> Optional[torch.Tensor]:
        if not path.is_file():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("format") == _FORMAT and obj.get("version") == _VERSION and obj.get(
                    "fingerprint") == self.fingerprint and tuple(obj["images"].shape) == tuple(self.test.images.shape):
                return obj["images"]
            reason = "made from other images or by another version"
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is simply made again
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("%s: unusable shift cache (%s); generating it again", path, reason)
        return None

    def load(self, name: str, severity: int) -> torch.Tensor:
        """The uint8 corrupted copy, from the cache or generated (and cached) now."""
        path = self.path(name, severity)
        images = self._read(path)
        if images is None:
            images = self._generate(name, severity)
            payload = {"format": _FORMAT, "version": _VERSION, "fingerprint": self.fingerprint, "corruption": name,
                       "severity": severity, "seed": self.seed, "images": images}
            atomic_write(path, lambda f: torch.save(payload, f))
        return images

    def prepare(self) -> None:
        """Generate and cache every copy now (before training, so a failure costs no training)."""
        missing = [(n, s) for n in self.names for s in self.severities if self._read(self.path(n, s)) is None]
        if missing:
            log.info("eval.shift: generating %d corrupted copies of the %d test images into %s", len(missing),
                     len(self.test), self.cache_dir)
        for name, severity in missing:
            self.load(name, severity)

    def __iter__(self) -> Iterator[Tuple[str, int, torch.Tensor]]:
        for name in self.names:
            for severity in self.severities:
                yield name, severity, self.load(name, severity)


def _subset(test: ArrayDataset, limit: Optional[int]) -> ArrayDataset:
    if limit is None or limit >= len(test):
        return test
    # A fixed random subset (archives are sorted by class, so a prefix would be one class).
    keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return test.subset(keep.to(test.images.device))


def shift_sets(cfg: DictConfig, test: ArrayDataset) -> Optional[ShiftSets]:
    """The :class:`ShiftSets` that ``eval.*`` asks for (None when ``eval.shift`` is null)."""
    names = select_corruptions(cfg.eval.shift)
    if not names:
        return None
    cache = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir() / "shift"
    return ShiftSets(_subset(test, cfg.eval.shift_limit), names, list(cfg.eval.shift_severities), int(cfg.seed), cache)


def _scores(model, guide, pixels: torch.Tensor, labels: torch.Tensor, test: ArrayDataset, cfg: DictConfig,
            epoch: int, device: torch.device) -> Dict[str, float]:
    """Metrics of the predictive on ``pixels`` (float [N, C, H, W] in [0, 1]), normalised like the test set."""
    mean = torch.tensor(test.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(test.std, device=device).view(1, -1, 1, 1)
    x = (pixels.to(device) - mean) / std
    result = predict_fixed(model, guide, x, cfg, epoch, stream=SHIFT_STREAM)
    metrics = classification_metrics(result.probs.cpu(), labels.cpu())
    metrics["mean_entropy"] = float(result.entropy.mean())
    return metrics


def shift_metrics(model, guide, sets: ShiftSets, cfg: DictConfig, epoch: int, device: torch.device) -> Dict[str, Any]:
    """Per corruption and severity: accuracy, NLL, Brier, both ECEs and the mean predictive entropy
    (nats) of the predictive after ``epoch``; ``clean`` is the same test images uncorrupted, and
    ``mean`` the average over corruptions per severity (``"0"``: clean)."""
    test, labels = sets.test, sets.test.labels
    clean = _scores(model, guide, test.images.float() / test.scale, labels, test, cfg, epoch, device)
    per: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, severity, images in sets:  # the copies are 0..255 whatever the data's own scale
        per.setdefault(name, {})[str(severity)] = _scores(model, guide, images.float() / 255, labels, test, cfg,
                                                          epoch, device)
    mean = {"0": clean}
    for severity in sets.severities:
        rows = [per[name][str(severity)] for name in sets.names]
        mean[str(severity)] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {
        "note": "CIFAR-10-C-style corruptions made by pyro_ssvi.corruptions (published constants), not the "
                "official CIFAR-10-C files",
        "images": len(test), "seed": sets.seed, "severities": list(sets.severities), "clean": clean,
        "corruptions": per, "mean": mean,
    }
