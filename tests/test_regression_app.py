"""Regression in the training application (diabetes, any CSV), and the posterior diagnostics."""

import json
import logging

import numpy as np
import pytest
import torch

import pyro_ssvi
from pyro_ssvi import checkpoint, train
from pyro_ssvi.config import compose
from pyro_ssvi.errors import SSVIConfigError, SSVIDataError, SSVIDataNotFoundError
from pyro_ssvi.predictive import RegressionPrediction, predict


def test_diabetes_regression_end_to_end(tmp_path):
    out = tmp_path / "run"
    final = train.run(compose(["task=regression", "data=diabetes", f"output_dir={out}", "progress=false"]))
    for name in ("metrics.json", "metrics.jsonl", "checkpoint.pt", "predictions.png", "learning_curves.png",
                 "posterior.png", "train.log"):
        assert (out / name).is_file(), name
    assert not (out / "reliability.png").exists()
    written = json.loads((out / "metrics.json").read_text())
    for key in ("rmse", "mae", "nll", "coverage_50", "coverage_90", "coverage_95", "width_90",
                "quantile_calibration_error", "crps", "noise_sigma"):
        assert key in written, key
    # In the target's units (disease progression, std 83 on the test split): the dense AutoNormal
    # baseline of examples/regression.py reaches ~0.72 standardized, i.e. ~54 here.
    assert final["rmse"] < 60 and 0.85 <= final["coverage_90"] <= 0.95
    assert final["posterior_learned"]

    # The stored standardization reproduces the predictions of a loaded model.
    state = checkpoint.read(out / "checkpoint.pt")
    stats = state["normalization"]
    assert set(stats) >= {"feature_mean", "feature_std", "target_mean", "target_std"}
    model, guide = pyro_ssvi.load(out / "checkpoint.pt")
    from pyro_ssvi.data import load_diabetes

    _, test = load_diabetes()
    x = (test.features - torch.tensor(stats["feature_mean"])) / torch.tensor(stats["feature_std"])
    pred = predict(model, guide, x, num_samples=200)
    assert isinstance(pred, RegressionPrediction)
    rmse = float(((pred.mean * stats["target_std"] + stats["target_mean"]) - test.targets).pow(2).mean().sqrt())
    assert rmse == pytest.approx(final["rmse"], rel=0.02)


def _csv(path, rows=300, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = 2.0 * x[:, 0] - x[:, 1] + noise * rng.normal(size=rows)
    with open(path, "w") as f:
        f.write("a,b,c,target\n")
        for row, t in zip(x, y):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{t:.6f}\n")
    return path


def test_any_csv_table(tmp_path):
    path = _csv(tmp_path / "data.csv")
    final = train.run(compose(["data=table", f"data.path={path}", "data.target=target", f"output_dir={tmp_path / 'run'}",
                               "progress=false", "train.epochs=300", "eval.every=100"]))
    # The noise is 0.5: a fitted model's RMSE is close to it, and its learned noise scale too.
    assert final["rmse"] < 0.65 and final["noise_sigma"] == pytest.approx(0.5, rel=0.3)
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["data"]
    assert stored["path"] == str(path) and stored["target"] == "target"


def test_parquet_table(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    table = pa.table({"u": x[:, 0], "v": x[:, 1], "y": x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=200)})
    pq.write_table(table, tmp_path / "data.parquet")
    final = train.run(compose(["data=table", f"data.path={tmp_path / 'data.parquet'}", "data.target=y",
                               f"output_dir={tmp_path / 'run'}", "progress=false", "train.epochs=200", "eval.every=100"]))
    assert final["rmse"] < 0.45


@pytest.mark.parametrize("overrides, error, message", [
    (["data.target=nope"], SSVIConfigError, r"data.target='nope' is not a column of .*; its columns are \['a', 'b', 'c', 'target'\]"),
    (["data.path=/no/such.csv"], SSVIDataNotFoundError, r"data.path='/no/such.csv' does not exist"),
    (["data.test_fraction=1.5"], SSVIConfigError, r"data.test_fraction=1.5 is not allowed"),
    (["model=resnet18"], SSVIConfigError, "a regression takes model=mlp"),
    (["eval.ood=noise"], SSVIConfigError, "eval.ood is for classifiers"),
])
def test_bad_table_runs(tmp_path, overrides, error, message):
    path = _csv(tmp_path / "data.csv", rows=40)
    base = ["data=table", f"data.path={path}", "data.target=target", f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(error, match=message):
        train.run(compose(base + overrides))
    assert not (tmp_path / "run").exists()


def test_non_numeric_column_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,label,target\n1.0,cat,2.0\n2.0,dog,3.0\n3.0,cat,4.0\n")
    with pytest.raises(SSVIDataError, match=r"column 'label' is not numeric \(line 2\)"):
        train.run(compose(["data=table", f"data.path={path}", "data.target=target", f"output_dir={tmp_path / 'r'}"]))


def test_task_must_match_the_data():
    with pytest.raises(SSVIConfigError, match="task=regression but data=digits is a classification data set"):
        train.run(compose(["task=regression"]))


# ------------------------------------------------------------------ posterior diagnostics
def test_the_small_data_recipe_moves_the_sigmas_and_the_old_one_is_flagged(tmp_path, caplog):
    """Fails if the posterior sigmas of a digits run stop moving (they sat at their initial value,
    1e-3, under a KL weight of 0.01 / N and the means' learning rate)."""
    learned = train.run(compose([f"output_dir={tmp_path / 'recipe'}", "progress=false", "train.epochs=5"]))
    assert learned["posterior_learned"] and learned["posterior_sigma_moved"] > 0.9
    for layer in learned["posterior"].values():
        assert layer["sigma_end"]["median"] > 1.2 * layer["sigma_start"]["median"]
    with caplog.at_level(logging.WARNING):
        frozen = train.run(compose([f"output_dir={tmp_path / 'old'}", "progress=false", "train.epochs=5",
                                    "method.kl_max=0.01", "method.kl_warmup=0.5", "train.sigma_lr=0.05"]))
    assert not frozen["posterior_learned"] and frozen["posterior_sigma_moved"] < 0.01
    assert "the posterior did not learn" in caplog.text
    assert "NO" in (tmp_path / "old" / "train.log").read_text()
    assert (tmp_path / "old" / "posterior.png").is_file()
