"""eval.shift: corrupted copies of the test set, generated once and cached, scored per corruption
and severity, plotted; on digits by default, on the shared CIFAR-10 copy as a slow test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pyro_ssvi import train
from pyro_ssvi.config import compose
from pyro_ssvi.corruptions import CORRUPTIONS
from pyro_ssvi.data import load_dataset
from pyro_ssvi.errors import SSVIConfigError
from pyro_ssvi.training.shift import ShiftSets

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
KEYS = {"accuracy", "nll", "brier", "ece_top_label_l1_15bin", "calibration_error_paper", "mean_entropy"}


def test_shift_end_to_end_on_digits(tmp_path):
    cache = tmp_path / "cache"
    overrides = [f"output_dir={tmp_path / 'a'}", "progress=false", "train.epochs=8", "eval.shift=all",
                 "eval.shift_severities=[1,3,5]", f"data.cache_dir={cache}"]
    final = train.run(compose(overrides))
    shift = final["shift"]
    assert set(shift["corruptions"]) == set(CORRUPTIONS) and shift["images"] == 360 and shift["severities"] == [1, 3, 5]
    for by_severity in shift["corruptions"].values():
        assert set(by_severity) == {"1", "3", "5"} and all(set(m) == KEYS for m in by_severity.values())
    assert set(shift["clean"]) == KEYS and list(shift["mean"]) == ["0", "1", "3", "5"]
    mean = shift["mean"]
    # a model that learned digits loses accuracy and gains uncertainty as corruption grows
    assert shift["clean"]["accuracy"] > 0.85 and mean["5"]["accuracy"] < mean["1"]["accuracy"] < mean["0"]["accuracy"] + 0.01
    assert mean["5"]["mean_entropy"] > mean["0"]["mean_entropy"]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["shift"] == shift
    assert (tmp_path / "a" / "shift.png").stat().st_size > 10_000
    assert "shift: mean accuracy" in (tmp_path / "a" / "train.log").read_text()

    # the cached copies: one per corruption and severity, in [0, 255]; contrast checked by formula
    files = sorted(cache.glob("digits-*.pt"))
    assert len(files) == 3 * len(CORRUPTIONS)
    test = load_dataset("digits", split="test")
    x = test.images.double() / 16
    m = x.mean(dim=(2, 3), keepdim=True)
    expected = (((x - m) * 0.15 + m).clamp(0, 1) * 255).round()  # contrast, severity 5
    stored = torch.load(next(cache.glob("digits-*-contrast-s5-seed0.pt")), weights_only=True)["images"]
    assert (stored.double() - expected).abs().max() <= 1

    # the same request reads the cache (files untouched); generated afresh, the copies are the same bytes
    stamps = {f: f.stat().st_mtime_ns for f in files}
    ShiftSets(test, list(CORRUPTIONS), [1, 3, 5], seed=0, cache_dir=cache).prepare()
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())
    fresh = ShiftSets(test, ["fog", "impulse_noise"], [3], seed=0, cache_dir=tmp_path / "fresh")
    for name in ("fog", "impulse_noise"):
        cached = torch.load(next(cache.glob(f"digits-*-{name}-s3-seed0.pt")), weights_only=True)["images"]
        assert torch.equal(fresh.load(name, 3), cached)


def test_a_bad_cache_file_is_made_again_and_the_seed_changes_the_draws(tmp_path, caplog):
    test = load_dataset("digits", split="test").subset(torch.arange(20))
    sets = ShiftSets(test, ["gaussian_noise"], [2], seed=0, cache_dir=tmp_path)
    first = sets.load("gaussian_noise", 2)
    sets.path("gaussian_noise", 2).write_bytes(b"not a torch file")
    assert torch.equal(sets.load("gaussian_noise", 2), first) and "unusable shift cache" in caplog.text
    other = ShiftSets(test, ["gaussian_noise"], [2], seed=1, cache_dir=tmp_path).load("gaussian_noise", 2)
    assert not torch.equal(other, first)
    assert ShiftSets(test.subset(torch.arange(10)), ["fog"], [1], 0, tmp_path).fingerprint != sets.fingerprint


@pytest.mark.parametrize("override,expected", [
    ("eval.shift=snow", "unknown corruption 'snow'; expected all, a family (noise, blur, weather, digital)"),
    ("eval.shift=[fog,frost]", "unknown corruption 'frost'"),
    ("eval.shift_severities=[0,6]", "expected a non-empty list of integers 1-5"),
])
def test_bad_shift_settings_fail_before_training(tmp_path, override, expected):
    with pytest.raises(SSVIConfigError) as info:
        train.run(compose([f"output_dir={tmp_path}", "progress=false", override]))
    assert expected in str(info.value) and not (tmp_path / "config.yaml").exists()


def test_shift_is_refused_for_a_regression(tmp_path):
    with pytest.raises(SSVIConfigError, match="eval.shift corrupts images"):
        train.run(compose([f"output_dir={tmp_path}", "data=diabetes", "eval.shift=noise"]))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason=f"{SHARED_ARCHIVE} not present (the shared data folder)")
def test_shift_on_the_shared_cifar10_copy_with_a_tiny_resnet(tmp_path):
    overrides = ["data=cifar10_archive", f"data.root={SHARED_ARCHIVE}", f"data.cache_dir={tmp_path / 'cache'}",
                 "model=resnet18", "model.width=0.0625", "train.epochs=2", "train.lr=0.05", "data.limit_train=5000",
                 "data.limit_test=1000", "eval.num_samples=2", "eval.shift=all", "eval.shift_severities=[1,3,5]",
                 "data.val_size=500", f"output_dir={tmp_path / 'run'}", "progress=false"]
    final = train.run(compose(overrides))
    shift = final["shift"]
    assert shift["images"] == 1000 and set(shift["corruptions"]) == set(CORRUPTIONS)
    assert shift["clean"]["accuracy"] > 0.15  # above chance after 2 short epochs
    assert shift["mean"]["5"]["accuracy"] <= shift["clean"]["accuracy"] + 0.02
    assert final["best"]["epoch"] in (1, 2) and (tmp_path / "run" / "best.pt").is_file()
