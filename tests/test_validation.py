"""data.val_size and best.pt: a seeded validation split, per-epoch val_* metrics, and a best
checkpoint chosen on validation data only (never on the test set), kept through resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pyro_ssvi
import pyro_ssvi.training.best as best_module
from pyro_ssvi import checkpoint, train
from pyro_ssvi.config import compose
from pyro_ssvi.data import ArrayDataset
from pyro_ssvi.errors import SSVICheckpointError, SSVIConfigError
from pyro_ssvi.training.data import prepare_data, split_validation

QUICK = ["progress=false", "data.limit_train=512", "train.epochs=3", "data.val_size=128"]


def cfg_for(path: Path, *overrides: str):
    return compose([f"output_dir={path}", *QUICK, *overrides])


def _indexed(n: int) -> ArrayDataset:
    """n blank images whose labels are their own indices (so a split can be traced back)."""
    return ArrayDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), n, (0.5,), (0.5,), "ids")


def test_the_split_is_seeded_disjoint_and_of_the_asked_size():
    train_part, val = split_validation(_indexed(100), 30, seed=4)
    ids_train, ids_val = train_part.labels.tolist(), val.labels.tolist()
    assert len(ids_val) == 30 and sorted(ids_train + ids_val) == list(range(100)) and not set(ids_train) & set(ids_val)
    assert ids_val == sorted(ids_val) and ids_train == sorted(ids_train)  # the original order is kept
    assert split_validation(_indexed(100), 30, seed=4)[1].labels.tolist() == ids_val  # same seed, same split
    assert split_validation(_indexed(100), 30, seed=5)[1].labels.tolist() != ids_val
    assert len(split_validation(_indexed(100), 0.25, seed=0)[1]) == 25
    assert len(split_validation(_indexed(10), 0.01, seed=0)[1]) == 1  # a fraction holds out at least one
    whole = _indexed(10)
    assert split_validation(whole, 0, seed=0) == (whole, None)  # 0: no split, the same data set


def test_the_run_trains_on_the_rest_and_counts_it(tmp_path):
    data = prepare_data(compose(["data.val_size=0.2"]), torch.device("cpu"))
    assert (len(data.val), len(data.train)) == (287, 1150)  # 0.2 * 1437 = 287.4
    assert data.info.num_data == 1150  # the KL is scaled by the examples actually trained on
    assert data.val_x.shape == (287, 1, 8, 8) and data.val_y.shape == (287,)


@pytest.mark.parametrize("override,expected", [
    ("data.val_size=512", "data.val_size=512 holds out 512 of the 512 training examples"),
    ("data.val_size=1.5", "fraction in (0, 1)"),
    ("checkpoint.best_on=test_nll", "checkpoint.best_on='test_nll' is not allowed; allowed values: val_nll, val_accuracy"),
    ("checkpoint.name=best.pt", "best.pt"),
])
def test_bad_validation_settings_fail_before_anything_is_written(tmp_path, override, expected):
    with pytest.raises(SSVIConfigError) as info:
        train.run(cfg_for(tmp_path, override))
    assert expected in str(info.value)
    assert not (tmp_path / "config.yaml").exists()


def test_validation_accuracy_is_refused_for_a_regression(tmp_path):
    with pytest.raises(SSVIConfigError, match="val_accuracy is for classifiers"):
        train.run(compose([f"output_dir={tmp_path}", "data=diabetes", "checkpoint.best_on=val_accuracy"]))


# Planted scores: epoch 3 is by far the best on the TEST set, epoch 2 the best on validation.
PLANTED = {
    "val": {1: {"nll": 0.9, "accuracy": 0.70}, 2: {"nll": 0.2, "accuracy": 0.95}, 3: {"nll": 0.6, "accuracy": 0.80}},
    "test": {1: {"nll": 0.9, "accuracy": 0.70}, 2: {"nll": 0.8, "accuracy": 0.75}, 3: {"nll": 0.01, "accuracy": 1.0}},
}


def _plant(monkeypatch, planted):
    real = train.evaluate

    def evaluate(model, guide, data, cfg, epoch, split="test"):
        metrics, result = real(model, guide, data, cfg, epoch, split=split)
        return {**metrics, **planted[split][epoch]}, result

    monkeypatch.setattr(train, "evaluate", evaluate)  # the test set's evaluation
    monkeypatch.setattr(best_module, "evaluate", evaluate)  # the validation split's


def _record_checkpoints(monkeypatch) -> dict:
    """Epoch -> guide tensors of every checkpoint.pt the run writes."""
    real, seen = checkpoint.save, {}

    def save(path, state):
        if Path(path).name == "checkpoint.pt":
            seen[state["epoch"]] = {k: v.clone() for k, v in state["guide"].items()}
        real(path, state)

    monkeypatch.setattr(checkpoint, "save", save)
    return seen


@pytest.mark.parametrize("best_on", ["val_nll", "val_accuracy"])
def test_best_pt_is_chosen_on_validation_data_not_on_the_test_set(tmp_path, monkeypatch, best_on):
    _plant(monkeypatch, PLANTED)
    guides = _record_checkpoints(monkeypatch)
    final = train.run(cfg_for(tmp_path, f"checkpoint.best_on={best_on}", "checkpoint.every=1"))
    assert final["best"]["epoch"] == 2 and final["best"]["on"] == best_on
    assert final["best"]["test"]["accuracy"] == 0.75 and final["best"]["test"]["nll"] == 0.8  # epoch 2's test scores
    assert final["accuracy"] == 1.0 and final["val"]["nll"] == 0.6  # the last epoch, reported as such
    saved = checkpoint.read(tmp_path / "best.pt")
    assert saved["epoch"] == 2 and saved["best"]["value"] == PLANTED["val"][2][best_on[4:]]
    for k, v in saved["guide"].items():
        assert torch.equal(v, guides[2][k]), f"best.pt's {k} is not epoch 2's"
    assert any(not torch.equal(saved["guide"][k], guides[3][k]) for k in saved["guide"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_nll"] for r in rows] == [0.9, 0.2, 0.6] and all("val_ece" in r for r in rows)
    assert json.loads((tmp_path / "metrics.json").read_text())["best"]["epoch"] == 2
    assert "best epoch on" in (tmp_path / "train.log").read_text() and "val accuracy" in (tmp_path / "train.log").read_text()
    model, guide = pyro_ssvi.load(tmp_path / "best.pt")  # a checkpoint that load() reads ...
    with pytest.raises(SSVICheckpointError, match="lacks"):  # ... but not one to resume from
        train.run(cfg_for(tmp_path / "again", f"resume={tmp_path / 'best.pt'}"))


def test_ties_on_validation_accuracy_go_to_the_lower_validation_nll(tmp_path, monkeypatch):
    planted = {"val": {1: {"nll": 0.5, "accuracy": 0.9}, 2: {"nll": 0.3, "accuracy": 0.9}, 3: {"nll": 0.4, "accuracy": 0.9}},
               "test": PLANTED["test"]}
    _plant(monkeypatch, planted)
    assert train.run(cfg_for(tmp_path, "checkpoint.best_on=val_accuracy"))["best"]["epoch"] == 2


def test_resumed_runs_keep_the_best_epoch_and_its_file(tmp_path, monkeypatch):
    common = ["seed=3", "checkpoint.every=1"]
    full = train.run(cfg_for(tmp_path / "full", *common))
    real, calls = checkpoint.save, []

    def save(path, state):  # die right after the second checkpoint.pt
        real(path, state)
        calls.append(Path(path).name)
        if calls.count("checkpoint.pt") == 2:
            raise KeyboardInterrupt("simulated kill")

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", save)
        with pytest.raises(KeyboardInterrupt):
            train.run(cfg_for(tmp_path / "cut", *common))
    resumed = train.run(cfg_for(tmp_path / "resumed", f"resume={tmp_path / 'cut' / 'checkpoint.pt'}"))
    assert resumed["best"] == full["best"] and resumed["val"] == full["val"]
    a, b = checkpoint.read(tmp_path / "full" / "best.pt"), checkpoint.read(tmp_path / "resumed" / "best.pt")
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["guide"][k], b["guide"][k]) for k in a["guide"])
    # what the stored run was selected with cannot change under resume=
    for override in ("data.val_size=64", "checkpoint.best_on=val_accuracy"):
        with pytest.raises(SSVIConfigError, match=override.split("=")[0]):
            train.run(cfg_for(tmp_path / "x", f"resume={tmp_path / 'cut' / 'checkpoint.pt'}", override))


def test_no_validation_split_by_default(tmp_path):
    final = train.run(compose([f"output_dir={tmp_path}", "progress=false", "data.limit_train=256", "train.epochs=1"]))
    assert "best" not in final and "val" not in final and not (tmp_path / "best.pt").exists()
    assert not any(k.startswith("val_") for k in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0]))


def test_a_regression_selects_on_validation_nll(tmp_path):
    final = train.run(compose([f"output_dir={tmp_path}", "progress=false", "data=diabetes", "train.epochs=20",
                               "train.batch_size=128", "eval.every=10", "data.val_size=0.2", "eval.num_samples=20"]))
    assert final["best"]["on"] == "val_nll" and final["best"]["epoch"] in (10, 20)
    assert set(final["best"]["test"]) >= {"rmse", "nll", "coverage_90"} and final["val"]["rmse"] > 0
    assert checkpoint.read(tmp_path / "best.pt")["epoch"] == final["best"]["epoch"]
