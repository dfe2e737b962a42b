"""Tests of pyro_ssvi.metrics against hand-computed values and independent references."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

from pyro_ssvi import metrics
from pyro_ssvi.errors import SSVIConfigError

# Four examples, three classes, float64 so the hand arithmetic below is exact to ~1e-15.
#   example  probs               label  argmax  correct  confidence  ECE bin (width 1/15)
#   A        [0.90, 0.05, 0.05]  0      0       yes      0.90        13 = (0.8667, 0.9333]
#   B        [0.04, 0.88, 0.08]  2      1       no       0.88        13
#   C        [0.75, 0.15, 0.10]  1      0       no       0.75        11 = (0.7333, 0.8000]
#   D        [0.25, 0.25, 0.50]  2      2       yes      0.50         7 = (0.4667, 0.5333]
PROBS = torch.tensor(
    [[0.90, 0.05, 0.05], [0.04, 0.88, 0.08], [0.75, 0.15, 0.10], [0.25, 0.25, 0.50]],
    dtype=torch.float64)
LABELS = torch.tensor([0, 2, 1, 2])


def test_hand_computed_accuracy_nll_brier_ece():
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(2 / 4)
    # True-class probabilities: 0.90, 0.08, 0.15, 0.50.
    expected_nll = -(math.log(0.90) + math.log(0.08) + math.log(0.15) + math.log(0.50)) / 4
    assert metrics.nll(PROBS, LABELS) == pytest.approx(expected_nll, rel=1e-12)
    # Brier per example, sum_c (p_c - onehot_c)^2:
    #   A: 0.10^2 + 0.05^2 + 0.05^2 = 0.015
    #   B: 0.04^2 + 0.88^2 + 0.92^2 = 0.0016 + 0.7744 + 0.8464 = 1.6224
    #   C: 0.75^2 + 0.85^2 + 0.10^2 = 0.5625 + 0.7225 + 0.01 = 1.295
    #   D: 0.25^2 + 0.25^2 + 0.50^2 = 0.0625 + 0.0625 + 0.25 = 0.375
    expected_brier = (0.015 + 1.6224 + 1.295 + 0.375) / 4  # = 0.82685
    assert metrics.brier(PROBS, LABELS) == pytest.approx(expected_brier, rel=1e-12)
    # ECE: bin 13 holds A, B: conf (0.90 + 0.88) / 2 = 0.89, acc 1/2 -> gap 0.39, weight 2/4
    #      bin 11 holds C:    conf 0.75, acc 0 -> gap 0.75, weight 1/4
    #      bin  7 holds D:    conf 0.50, acc 1 -> gap 0.50, weight 1/4
    expected_ece = 2 / 4 * 0.39 + 1 / 4 * 0.75 + 1 / 4 * 0.50  # = 0.5075
    assert metrics.ece(PROBS, LABELS) == pytest.approx(expected_ece, rel=1e-12)

    bins = metrics.reliability_bins(PROBS, LABELS)
    assert bins.count.tolist() == [0] * 7 + [1, 0, 0, 0, 1, 0, 2, 0]
    assert bins.confidence[13].item() == pytest.approx(0.89)
    assert bins.accuracy[13].item() == pytest.approx(0.5)
    assert torch.isnan(bins.confidence[0]) and torch.isnan(bins.accuracy[0])  # empty bin
    assert bins.edges.shape == (16,) and bins.edges[0] == 0 and bins.edges[-1] == 1


def test_bins_are_left_open_right_closed():
    # With 5 bins the edges are 0, .2, .4, .6, .8, 1; a confidence on an edge goes to the lower bin.
    probs = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]], dtype=torch.float64)
    bins = metrics.reliability_bins(probs, torch.tensor([0, 0, 1, 0]), num_bins=5)
    assert bins.count.tolist() == [0, 0, 2, 1, 1]  # 0.6, 0.5 -> (.4, .6]; 0.8 -> (.6, .8]; 1 -> (.8, 1]


def _loop_ece(probs: np.ndarray, labels: np.ndarray, num_bins: int) -> float:
    """Straightforward reference: loop over bins (lo, hi], confidence 0 joining the first."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        members = [i for i in range(len(conf)) if lo < conf[i] <= hi or (k == 0 and conf[i] == 0)]
        if members:
            acc = sum(pred[i] == labels[i] for i in members) / len(members)
            avg_conf = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - avg_conf)
    return total


@pytest.mark.parametrize("num_bins", [1, 7, 15])
def test_ece_matches_loop_reference(num_bins):
    gen = torch.Generator().manual_seed(num_bins)
    probs = torch.softmax(3 * torch.randn(500, 6, generator=gen), dim=1)
    labels = torch.randint(0, 6, (500,), generator=gen)
    expected = _loop_ece(probs.double().numpy(), labels.numpy(), num_bins)
    assert metrics.ece(probs, labels, num_bins=num_bins) == pytest.approx(expected, abs=1e-12)


def _synthetic(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and labels drawn from them, i.e. perfectly calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, c, generator=gen)
    probs = torch.softmax(logits, dim=1)
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return logits, labels


def test_calibrated_data_has_small_ece_and_overconfident_large():
    logits, labels = _synthetic(20000, 5, seed=0)
    assert metrics.ece(torch.softmax(logits, 1), labels) < 0.015
    # Temperature 0.3 sharpens the same predictions: confidence now exceeds accuracy.
    assert metrics.ece(torch.softmax(logits / 0.3, 1), labels) > 0.1


def test_paper_calibration_error_matches_package():
    calibration = pytest.importorskip("calibration")
    logits, labels = _synthetic(4000, 5, seed=1)
    probs = torch.softmax(logits, 1)
    direct = calibration.get_calibration_error(probs.double().numpy(), labels.numpy())
    assert metrics.paper_calibration_error(probs, labels) == pytest.approx(float(direct), rel=1e-12)

    good = metrics.paper_calibration_error(probs, labels)
    over = metrics.paper_calibration_error(torch.softmax(logits / 0.3, 1), labels)
    assert good < 0.02
    assert over > 0.05 and over > 3 * good


def test_missing_calibration_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "calibration", None)  # makes `import calibration` fail
    with pytest.raises(ImportError, match="pip install uncertainty-calibration"):
        metrics.paper_calibration_error(PROBS, LABELS)
    assert "calibration_error_paper" not in metrics.classification_metrics(PROBS, LABELS)


def test_classification_metrics_keys_and_values():
    pytest.importorskip("calibration")
    out = metrics.classification_metrics(PROBS, LABELS)
    assert set(out) == {"accuracy", "nll", "brier", "ece_top_label_l1_15bin", "calibration_error_paper"}
    assert all(type(v) is float for v in out.values())
    assert out["accuracy"] == metrics.accuracy(PROBS, LABELS)
    assert out["ece_top_label_l1_15bin"] == metrics.ece(PROBS, LABELS)


def test_nll_eps_clamp():
    probs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert metrics.nll(probs, torch.tensor([1])) == pytest.approx(-math.log(1e-12))
    assert metrics.nll(probs, torch.tensor([1]), eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_predictive_entropy():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.5, 0.25, 0.25, 0.0]])
    h = metrics.predictive_entropy(probs)
    assert h.shape == (3,) and h.dtype == torch.float32
    # One-hot: 0 (0 log 0 = 0). Uniform: log 4. [.5, .25, .25, 0]: .5 log 2 + 2 * .25 log 4 = 1.5 log 2.
    torch.testing.assert_close(h, torch.tensor([0.0, math.log(4), 1.5 * math.log(2)]))


def test_ood_auroc_hand_and_sklearn():
    # out 0.4 beats in 0.1 (1) and ties both in 0.4 (1/2 each) -> 2; out 0.8 beats all three -> 3.
    auroc = metrics.ood_auroc(torch.tensor([0.1, 0.4, 0.4]), torch.tensor([0.4, 0.8]))
    assert auroc == pytest.approx(5 / 6)
    assert metrics.ood_auroc(torch.zeros(3), torch.zeros(4)) == pytest.approx(0.5)

    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(3)
    # Scores rounded to one decimal so there are many ties within and across the groups.
    s_in = torch.round(torch.rand(700, generator=gen) * 10) / 10
    s_out = torch.round((torch.rand(300, generator=gen) * 10 + 2)) / 10
    y = np.r_[np.zeros(700), np.ones(300)]
    expected = roc_auc_score(y, np.r_[s_in.numpy(), s_out.numpy()])
    assert metrics.ood_auroc(s_in, s_out) == pytest.approx(expected, abs=1e-12)


def test_reliability_diagram_png(tmp_path):
    logits, labels = _synthetic(500, 4, seed=4)
    path = tmp_path / "sub" / "rel.png"
    out = metrics.plot_reliability_diagram(torch.softmax(logits, 1), labels, path, title="test")
    assert out == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(path.parent) == ["rel.png"]  # no temp file left behind


def test_reliability_diagram_failure_keeps_existing_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "rel.png"
    path.write_bytes(b"old contents")

    def broken_savefig(self, file, *args, **kwargs):
        file.write(b"\x89PNG half")  # a partial write, then the failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        metrics.plot_reliability_diagram(PROBS, LABELS, path)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["rel.png"]


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (torch.full((3,), 1 / 3), torch.tensor([0]), r"2-D \[N, C\]; got shape \[3\]"),
        (torch.full((2, 2, 2), 0.5), torch.tensor([0, 1]), r"2-D \[N, C\]; got shape \[2, 2, 2\]"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), r"non-empty .* got shape \[0, 3\]"),
        (PROBS, torch.tensor([0, 1, 2]), r"shape \[N\] = \[4\] .* got shape \[3\]"),
        (PROBS, LABELS.unsqueeze(1), r"shape \[N\] = \[4\] .* got shape \[4, 1\]"),
        (PROBS, torch.tensor([0, 1, 3, 2]), r"\[0, 2\] for C = 3; got range \[0, 3\]"),
        (PROBS, torch.tensor([0, -1, 2, 2]), r"\[0, 2\] for C = 3; got range \[-1, 2\]"),
        (PROBS, LABELS.double(), r"integer tensor .* got dtype torch.float64"),
        (PROBS * 0.5, LABELS, r"sum to 1 .* not logits"),
        (torch.log(PROBS), LABELS, r"lie in \[0, 1\]; got .* not logits"),
        (torch.tensor([[1.2, -0.2]]), torch.tensor([0]), r"lie in \[0, 1\]; got .* not logits"),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), r"NaN or inf"),
        (torch.tensor([[1, 0]]), torch.tensor([0]), r"floating-point .* got dtype torch.int64"),
        (PROBS.numpy(), LABELS, r"torch.Tensor .* got ndarray"),
    ],
)
def test_bad_inputs(probs, labels, match):
    for fn in (metrics.accuracy, metrics.nll, metrics.brier, metrics.ece, metrics.classification_metrics):
        with pytest.raises(SSVIConfigError, match=match):
            fn(probs, labels)
    assert issubclass(SSVIConfigError, ValueError)


def test_bad_other_arguments():
    with pytest.raises(SSVIConfigError, match="num_bins must be a positive int; got 0"):
        metrics.ece(PROBS, LABELS, num_bins=0)
    with pytest.raises(SSVIConfigError, match=r"rows? of probs must sum to 1"):
        metrics.predictive_entropy(torch.rand(4, 3))
    with pytest.raises(SSVIConfigError, match=r"score_out must be a non-empty 1-D tensor; got \[0\]"):
        metrics.ood_auroc(torch.rand(3), torch.empty(0))
    with pytest.raises(SSVIConfigError, match=r"score_in must be a non-empty 1-D tensor; got \[2, 2\]"):
        metrics.ood_auroc(torch.rand(2, 2), torch.rand(3))
    with pytest.raises(SSVIConfigError, match="score_in contains NaN"):
        metrics.ood_auroc(torch.tensor([float("nan")]), torch.rand(3))
