"""Predictive-quality metrics for classifiers: accuracy, NLL, Brier, calibration, OOD AUROC.

Every function takes *probabilities*, not logits: ``probs`` is ``[N, C]`` with rows summing
to 1 (e.g. softmax averaged over posterior draws) and ``labels`` is ``[N]`` integer class
ids. All arithmetic is done in float64 on CPU so results do not depend on the input dtype
or device. Scalars come back as Python floats.

Two calibration errors are provided because they are different numbers:

* :func:`ece` -- the textbook ECE (Guo et al. 2017): top-label confidence, equal-width
  bins, L1 gap, weighted by bin counts.
* :func:`paper_calibration_error` -- what the SSVI paper reports as "ECE": the debiased,
  class-marginal L2 calibration error of Kumar et al. 2019 (``uncertainty-calibration``).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from pyro_ssvi.errors import SSVIConfigError
from pyro_ssvi.fileio import atomic_write

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "brier",
    "classification_metrics",
    "ece",
    "nll",
    "ood_auroc",
    "paper_calibration_error",
    "plot_reliability_diagram",
    "predictive_entropy",
    "reliability_bins",
]

#: Allowed deviation of a row sum from 1 (loose enough for float16 / averaged softmax).
ROW_SUM_TOL = 1e-3
#: Allowed excursion of a single probability outside [0, 1]; such values are clamped.
VALUE_TOL = 1e-6


def _check_probs(probs: Tensor) -> Tensor:
    """Validate ``probs`` [N, C] and return it as float64 on CPU, clamped to [0, 1]."""
    if not isinstance(probs, Tensor):
        raise SSVIConfigError(f"probs must be a torch.Tensor of shape [N, C]; got {type(probs).__name__}")
    if probs.dim() != 2:
        raise SSVIConfigError(f"probs must be 2-D [N, C]; got shape {list(probs.shape)}")
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise SSVIConfigError(f"probs must be non-empty [N>0, C>0]; got shape {list(probs.shape)}")
    if not probs.is_floating_point():
        raise SSVIConfigError(f"probs must be a floating-point tensor; got dtype {probs.dtype}")
    p = probs.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(p).all():
        raise SSVIConfigError("probs contains NaN or inf; expected finite probabilities")
    lo, hi = p.min().item(), p.max().item()
    if lo < -VALUE_TOL or hi > 1 + VALUE_TOL:
        raise SSVIConfigError(
            f"probs must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}] "
            "(pass softmax probabilities, not logits)")
    worst = (p.sum(dim=1) - 1).abs().max().item()
    if worst > ROW_SUM_TOL:
        raise SSVIConfigError(
            f"each row of probs must sum to 1 (tolerance {ROW_SUM_TOL}); worst row is off by "
            f"{worst:.4g} (pass softmax probabilities, not logits)")
    return p.clamp(0.0, 1.0)


def _check(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a (probs [N, C], labels [N]) pair; return float64 probs and int64 labels."""
    p = _check_probs(probs)
    n, c = p.shape
    if not isinstance(labels, Tensor):
        raise SSVIConfigError(f"labels must be a torch.Tensor of shape [{n}]; got {type(labels).__name__}")
    if labels.shape != (n,):
        raise SSVIConfigError(
            f"labels must have shape [N] = [{n}] to match probs {list(p.shape)}; "
            f"got shape {list(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SSVIConfigError(f"labels must be an integer tensor (int64 class ids); got dtype {labels.dtype}")
    y = labels.detach().to(device="cpu", dtype=torch.int64)
    lo, hi = y.min().item(), y.max().item()
    if lo < 0 or hi >= c:
        raise SSVIConfigError(f"labels must be class ids in [0, {c - 1}] for C = {c}; got range [{lo}, {hi}]")
    return p, y


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose argmax class equals the label, in [0, 1].

    Ties in ``probs`` resolve to the lowest class index (``torch.argmax``).
    """
    p, y = _check(probs, labels)
    return (p.argmax(dim=1) == y).double().mean().item()


def nll(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, in nats.

    The true-class probability is clamped below at ``eps`` (default ``1e-12``, i.e. at most
    ~27.6 nats per example) so a confident miss gives a large finite value, not inf.
    """
    p, y = _check(probs, labels)
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return (-p_true.clamp_min(eps).log()).mean().item()


def brier(probs: Tensor, labels: Tensor) -> float:
    """Mean over examples of ``sum_c (p_c - onehot_c)^2``; range [0, 2]."""
    p, y = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return ((p - onehot) ** 2).sum(dim=1).mean().item()


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of top-label confidence; empty bins hold NaN means and count 0."""

    confidence: Tensor  #: [B] float64, mean top-label confidence in the bin
    accuracy: Tensor  #: [B] float64, fraction correct in the bin
    count: Tensor  #: [B] int64, number of examples in the bin
    edges: Tensor  #: [B + 1] float64, bin edges ``k / B``


def reliability_bins(probs: Tensor, labels: Tensor, num_bins: int = 15) -> ReliabilityBins:
    """Bin examples by top-label confidence into ``num_bins`` equal-width bins on [0, 1].

    Bin ``k`` is the half-open interval ``(k/B, (k+1)/B]``; a confidence of exactly 0
    goes into bin 0, so every value in [0, 1] lands in exactly one bin.
    """
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise SSVIConfigError(f"num_bins must be a positive int; got {num_bins!r}")
    p, y = _check(probs, labels)
    conf, pred = p.max(dim=1)
    correct = (pred == y).double()
    # arange / B gives the correctly rounded k/B, unlike linspace's accumulated step.
    edges = torch.arange(num_bins + 1, dtype=torch.float64) / num_bins
    # right=False: index k satisfies edges[k] < conf <= edges[k+1] -> (lo, hi] bins.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(idx, minlength=num_bins)
    sum_conf = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, conf)
    sum_corr = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, correct)
    denom = count.double()
    # 0/0 -> NaN on purpose: an empty bin has no mean, and NaN keeps it out of plots.
    return ReliabilityBins(sum_conf / denom, sum_corr / denom, count, edges)


def ece(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    """Expected calibration error: top-label, equal-width bins, L1, count-weighted.

    ``sum_k (n_k / N) * |acc_k - conf_k|`` over the non-empty bins of
    :func:`reliability_bins` (same bin edges, ``(lo, hi]``). Range [0, 1].
    """
    bins = reliability_bins(probs, labels, num_bins)
    keep = bins.count > 0
    w = bins.count[keep].double() / bins.count.sum()
    return (w * (bins.accuracy[keep] - bins.confidence[keep]).abs()).sum().item()


def _import_calibration():
    try:
        import calibration  # the PyPI package "uncertainty-calibration"
    except ImportError as exc:
        raise ImportError(
            "paper_calibration_error needs the 'calibration' module; "
            "pip install uncertainty-calibration") from exc
    return calibration


def paper_calibration_error(probs: Tensor, labels: Tensor) -> float:
    """The calibration error the SSVI paper reports as "ECE".

    Calls ``calibration.get_calibration_error(probs, labels)`` from ``uncertainty-calibration``
    (Kumar et al. 2019) with its defaults ``p=2, debias=True, mode='marginal'``: for each
    class c the debiased L2 error of ``probs[:, c]`` against ``labels == c`` over 15
    equal-mass bins, then the root-mean-square over classes. Caveat from the package: if
    every class column has fewer than N/4 distinct values it treats the model as already
    binned and uses one bin per distinct value instead of 15 equal-mass bins.

    :raises ImportError: if the package is missing (``pip install uncertainty-calibration``).
    """
    cal = _import_calibration()
    p, y = _check(probs, labels)
    # The package wants numpy: float probs in [0, 1] and an integer label array.
    return float(cal.get_calibration_error(p.numpy(), y.numpy()))


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy ``-sum_c p_c log p_c`` of each row, in nats, with ``0 log 0 = 0``.

    :param probs: [N, C] probabilities.
    :returns: [N] tensor, dtype of ``probs``, on CPU; range [0, log C].
    """
    p = _check_probs(probs)
    return torch.special.entr(p).sum(dim=1).to(probs.dtype)


def ood_auroc(score_in: Tensor, score_out: Tensor) -> float:
    """AUROC for flagging OOD examples: ``P(s_out > s_in) + P(s_out == s_in) / 2``.

    Out-of-distribution examples are the positives and a higher score means "more OOD"
    (e.g. :func:`predictive_entropy`). Computed exactly as the Mann-Whitney U statistic
    with average ranks for ties, ``U / (n_in * n_out)``.

    :param score_in: [N_in] scores of in-distribution examples.
    :param score_out: [N_out] scores of out-of-distribution examples.
    """
    scores = []
    for name, s in (("score_in", score_in), ("score_out", score_out)):
        if not isinstance(s, Tensor) or s.dim() != 1 or s.numel() == 0:
            got = list(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise SSVIConfigError(f"{name} must be a non-empty 1-D tensor; got {got}")
        s = s.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(s).all():
            raise SSVIConfigError(f"{name} contains NaN or inf; expected finite scores")
        scores.append(s)
    s_in, s_out = scores
    n_in, n_out = s_in.numel(), s_out.numel()
    _, inverse, counts = torch.unique(torch.cat([s_in, s_out]), return_inverse=True, return_counts=True)
    # 1-based rank of each distinct value: the mean of the ranks its tied copies occupy.
    first = torch.cumsum(counts, 0) - counts + 1
    avg_rank = first.double() + (counts.double() - 1) / 2
    rank_sum_out = avg_rank[inverse[n_in:]].sum().item()
    u = rank_sum_out - n_out * (n_out + 1) / 2
    return u / (n_in * n_out)


def classification_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """All scalar metrics at once.

    Keys: ``accuracy``, ``nll``, ``brier``, ``ece_top_label_l1_15bin`` and, when
    ``uncertainty-calibration`` is importable, ``calibration_error_paper``.
    """
    _check(probs, labels)  # fail once, up front, with the clear message
    out = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece_top_label_l1_15bin": ece(probs, labels, num_bins=15),
    }
    try:
        _import_calibration()
    except ImportError:
        return out  # optional metric: omit rather than break an evaluation run
    out["calibration_error_paper"] = paper_calibration_error(probs, labels)
    return out


def plot_reliability_diagram(
    probs: Tensor,
    labels: Tensor,
    path: Union[str, os.PathLike],
    num_bins: int = 15,
    title: Optional[str] = None,
) -> str:
    """Write a reliability diagram PNG to ``path`` and return ``path`` as a string.

    Bars are per-bin accuracy (bins of :func:`reliability_bins`), the dashed diagonal is
    perfect calibration, and shaded boxes span each bin's accuracy-to-confidence gap; a lower
    panel counts the examples per bin (a bar of 3 examples says little). The ECE is in the
    legend. The file is written to a temporary name in the same directory and moved into place
    with ``os.replace``, so an existing file is never half-written.
    """
    from matplotlib.figure import Figure  # lazy: metrics must import without a plotting stack

    bins = reliability_bins(probs, labels, num_bins)
    err = ece(probs, labels, num_bins)
    keep = bins.count > 0
    centers = ((bins.edges[:-1] + bins.edges[1:]) / 2)[keep].numpy()
    acc = bins.accuracy[keep].numpy()
    conf = bins.confidence[keep].numpy()
    width = 1.0 / num_bins

    # A bare Figure (no pyplot) renders with Agg and touches no global backend state.
    fig = Figure(figsize=(5, 6.5), dpi=100)
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    ax.bar(centers, acc, width=width, color="tab:blue", edgecolor="black", linewidth=0.5,
           label=f"accuracy (ECE = {err:.4f})")
    ax.bar(centers, abs(conf - acc), bottom=[min(a, c) for a, c in zip(acc, conf)], width=width,
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
           title=(f"{title}\n" if title else "") + f"Reliability diagram ({num_bins} bins)")
    ax.legend(loc="upper left")
    counts.bar(centers, bins.count[keep].numpy(), width=width, color="tab:gray", edgecolor="black", linewidth=0.5)
    counts.set(xlabel="confidence (top-label probability)", ylabel="examples")
    for x, n in zip(centers, bins.count[keep].tolist()):
        counts.annotate(str(int(n)), (x, n), ha="center", va="bottom", fontsize=6)
    counts.set_ylim(0, 1.3 * max(bins.count.max().item(), 1))  # room for the labels
    fig.tight_layout()

    target = os.fspath(path)
    atomic_write(target, lambda f: fig.savefig(f, format="png"))
    return target
