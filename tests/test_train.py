"""The training application: configs, validation, outputs, resume, CLI, archive data end to end."""

from __future__ import annotations

import io
import contextlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_ssvi
from pyro_ssvi import checkpoint, train
from pyro_ssvi.config import compose, resolve_device, validate
from pyro_ssvi.data import CIFAR10_CLASSES
from pyro_ssvi.errors import SSVIConfigError
from pyro_ssvi.predictive import predict

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
FAST = ["progress=false", "train.epochs=1", "data.limit_train=256", "data.limit_test=128"]


def cfg_for(tmp_path: Path, *overrides: str):
    return compose([f"output_dir={tmp_path}", "progress=false", *overrides])


# ---------------------------------------------------------------------------------- configs


def test_default_config_is_ssvi_90_on_digits_mlp():
    cfg = compose()
    assert (cfg.model.name, cfg.data.name, cfg.method.name) == ("mlp", "digits", "ssvi")
    assert cfg.method.sparsity == 0.9 and list(cfg.model.hidden) == [256, 256]
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.momentum) == (60, 64, 0.05, 0.9)
    # The small-data recipe (docs/small_data_recipes.md): the exact ELBO, rho at its own learning rate.
    assert (cfg.method.kl_max, cfg.method.kl_warmup, cfg.train.sigma_lr) == (1.0, 0.0, 1.0)
    assert cfg.device == "auto" and cfg.task is None and cfg.data.task == "classification"
    validate(cfg)


def test_the_paper_recipe_is_kept_for_cifar():
    for data in ("cifar10", "cifar100", "cifar10_archive"):
        cfg = compose([f"data={data}", "model=resnet18"])
        assert (cfg.method.kl_max, cfg.method.kl_warmup, cfg.train.sigma_lr) == (0.01, 0.5, cfg.train.lr)
        assert cfg.train.optimizer == "sgd" and cfg.eval.num_samples == 5


def test_the_resnet_keeps_the_paper_kl_recipe_on_every_data_set():
    # Its N(0, 0.005^2) prior under the exact ELBO with rho at lr 1.0 diverged on digits (loss ~1e6).
    for data in ("digits", "fashion_mnist"):
        cfg = compose([f"data={data}", "model=resnet18"])
        assert (cfg.method.kl_max, cfg.method.kl_warmup, cfg.train.sigma_lr) == (0.01, 0.5, cfg.train.lr)
        mlp = compose([f"data={data}"])
        assert (mlp.method.kl_max, mlp.method.kl_warmup) == (1.0, 0.0) and mlp.train.sigma_lr > mlp.train.lr
    assert compose(["model=resnet18", "method.kl_max=1", "train.sigma_lr=0.2"]).train.sigma_lr == 0.2


def test_fashion_mnist_mlp_is_784_400_400_10_for_10_epochs():
    cfg = compose(["data=fashion_mnist", "model=mlp"])
    assert list(cfg.model.hidden) == [400, 400] and cfg.train.epochs == 10 and cfg.method.sparsity == 0.9


@pytest.mark.parametrize("group,options", [
    ("model", ["mlp", "resnet18"]),
    ("data", ["cifar10", "cifar100", "cifar10_archive", "fashion_mnist", "digits", "diabetes"]),
    ("method", ["ssvi", "dense_vi"]),
    ("experiment", ["quickstart", "cifar10_resnet18", "cifar100_resnet18"]),
])
def test_every_config_group_option_composes_and_validates(group, options):
    for option in options:
        cfg = compose([f"{group}={option}"])
        validate(cfg)
    assert compose(["method=dense_vi"]).method.sparsity == 0.0


# The authors' constants (their code): CIFAR-100 is normalized with its own training-split statistics.
PAPER_NORMALIZATION = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


def test_cifar100_is_normalized_with_its_own_statistics():
    for overrides in (["data=cifar100"], ["experiment=cifar100_resnet18"],
                      ["experiment=cifar100_resnet18", "model=mlp"]):
        d = compose(overrides).data
        assert (list(d.normalize.mean), list(d.normalize.std)) == PAPER_NORMALIZATION["cifar100"], overrides
    # and they are the data loader's own CIFAR-100 statistics (population std, 4 decimals)
    from pyro_ssvi.data.sources import _CIFAR_STATS
    mean, std = _CIFAR_STATS["cifar100"]
    assert list(mean) == PAPER_NORMALIZATION["cifar100"][0] and list(std) == PAPER_NORMALIZATION["cifar100"][1]


@pytest.mark.parametrize("name,data", [("cifar10_resnet18", "cifar10"), ("cifar100_resnet18", "cifar100")])
def test_paper_experiments_match_the_recipe(name, data):
    cfg = compose([f"experiment={name}"])
    assert (cfg.model.name, cfg.data.name, cfg.method.name) == ("resnet18", data, "ssvi")
    t, m, mo, d = cfg.train, cfg.method, cfg.model, cfg.data
    assert (t.epochs, t.batch_size, t.lr, t.sigma_lr, t.momentum) == (200, 128, 0.01, 0.01, 0.9)
    assert (t.weight_decay, t.sigma_weight_decay, t.lr_schedule) == (5e-4, 0.0, "cosine")
    assert (mo.prior_scale, mo.init_loc_std, list(mo.init_scale), mo.width) == (0.005, 0.01, [6e-4, 5e-4], 1.0)
    assert mo.dense_sites is None  # resnet18's default: the stem conv "conv1.weight" is dense
    assert (m.kl_max, m.kl_warmup, m.update_interval, m.drop_fraction, m.update_end) == (0.01, 0.5, 100, 0.3, 0.75)
    assert (m.removal, m.addition, m.sigma_init, m.loss, m.sparsity) == ("snr_abs", "grad", "mean", "mean_field", 0.9)
    assert d.augment and d.pad == 4
    assert (list(d.normalize.mean), list(d.normalize.std)) == PAPER_NORMALIZATION[data]
    assert cfg.eval.num_samples == 5
    # command-line choices still win over the experiment's defaults
    assert compose([f"experiment={name}", "data=cifar10_archive", "method.sparsity=0.95"]).data.name == "cifar10_archive"


@pytest.mark.parametrize("override,key,allowed", [
    ("data.name=imagenet", "data.name", "fashion_mnist"),
    ("model.name=vgg", "model.name", "resnet18"),
    ("method.sparsity=1.5", "method.sparsity", "[0, 1)"),
    ("method.sparsity=-0.1", "method.sparsity", "[0, 1)"),
    ("train.lr=-0.1", "train.lr", "(0, inf]"),
    ("train.epochs=0", "train.epochs", "integer"),
    ("device=tpu", "device", "auto, cpu, cuda"),
    ("method.removal=random", "method.removal", "snr_abs"),
    ("train.lr_schedule=step", "train.lr_schedule", "cosine"),
    ("eval.num_samples=0", "eval.num_samples", "integer"),
    ("resume=/no/such/checkpoint.pt", "resume", "no such"),
    ("train.precision=fp16", "train.precision", "fp32, bf16"),
    ("train.loss_sync=never", "train.loss_sync", "auto, step, epoch"),
    ("eval.ood=svhn", "eval.ood", "noise, vflip"),
    ("method.removal_lambda=2.0", "method.removal_lambda", "mean_exp_abs and snr_exp_abs"),
    ("train.channels_last=maybe", "train.channels_last", "true, false"),
])
def test_invalid_config_fails_before_training_naming_key_and_allowed(tmp_path, override, key, allowed):
    with pytest.raises(SSVIConfigError) as info:
        train.run(cfg_for(tmp_path, override))
    assert key in str(info.value) and allowed in str(info.value)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.yaml").exists()


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(SSVIConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# ------------------------------------------------------------------------------------ runs


def _interrupt_after_saves(monkeypatch, n: int) -> None:
    """Make the run die (as if killed) right after its n-th checkpoint write."""
    real_save, calls = checkpoint.save, []

    def save(path, state):
        real_save(path, state)
        calls.append(path)
        if len(calls) == n:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(train.checkpoint, "save", save)


def test_resume_is_bit_identical_and_outputs_are_complete(tmp_path, monkeypatch):
    # 8 steps per epoch and ΔT = 3 until the end, so masks change in every one of the 3 epochs.
    common = ["train.epochs=3", "data.limit_train=512", "method.update_interval=3", "method.update_end=1.0", "seed=3",
              "method.kl_warmup=0.5"]
    full = train.run(cfg_for(tmp_path / "full", *common))

    with monkeypatch.context() as m:
        _interrupt_after_saves(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train.run(cfg_for(tmp_path / "cut", *common))
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = train.run(cfg_for(tmp_path / "resumed", f"resume={tmp_path / 'cut' / 'checkpoint.pt'}"))

    a = checkpoint.read(tmp_path / "full" / "checkpoint.pt")
    b = checkpoint.read(tmp_path / "resumed" / "checkpoint.pt")
    for part in ("guide", "model"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert a["svi"] == b["svi"] and a["svi"]["surgery_log"]  # same steps, same mask updates
    assert a["scheduler"] == b["scheduler"]
    assert full["accuracy"] == resumed["accuracy"] and full["nll"] == resumed["nll"]

    # outputs of the uninterrupted run
    out = tmp_path / "full"
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "checkpoint.pt", "reliability.png",
                 "learning_curves.png", "density.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "test_accuracy", "test_nll", "test_ece", "density", "r_t", "lr", "beta",
                "images_per_s", "elapsed_s", "layer_density"):
        assert key in rows[-1], key
    assert rows[0]["beta"] < rows[-1]["beta"] and rows[-1]["lr"] < rows[0]["lr"]
    final = json.loads((out / "metrics.json").read_text())
    assert final["config"]["method"]["sparsity"] == 0.9 and final["accuracy"] == full["accuracy"]
    assert 0.1 <= final["training_flops_relative"] < 0.2  # 10% density plus the dense gradients of updates
    assert abs(final["density"] - 0.1) < 1e-3
    # the resumed run carries the whole history
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_progress_flag_and_dense_vi(tmp_path, capsys):
    final = train.run(cfg_for(tmp_path / "quiet", *FAST, "method=dense_vi", "method.update_interval=2"))
    captured = capsys.readouterr()
    assert "epoch 1/1" not in captured.err and "accuracy" in captured.out  # the final table
    assert final["density"] == 1.0 and final["training_flops_relative"] == 1.0  # dense VI: no mask updates
    assert checkpoint.read(tmp_path / "quiet" / "checkpoint.pt")["svi"]["surgery_log"] == []
    # A log (stderr not a terminal) gets no bar, only the epoch lines; a terminal gets the bar.
    train.run(cfg_for(tmp_path / "log", *FAST, "progress=true"))
    assert "%|" not in capsys.readouterr().err
    assert "epoch 1/1: loss" in (tmp_path / "log" / "train.log").read_text()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with contextlib.redirect_stderr(terminal):
        train.run(cfg_for(tmp_path / "bar", *FAST, "progress=true"))
    assert "epoch 1/1" in terminal.getvalue()


def _tiny_cifar_archive(path: Path, per_class_train: int = 20, per_class_test: int = 8) -> Path:
    """An ImageFolder .tar.gz with CIFAR-10's class names and random 32x32 PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", per_class_train), ("test", per_class_test)):
            for c, name in enumerate(CIFAR10_CLASSES):
                for i in range(count):
                    # class-dependent mean color, so there is something to learn
                    pixels = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"tiny/{split}/{name}/{i:04d}.png")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


@pytest.mark.parametrize("layout", [[], ["train.precision=bf16", "train.channels_last=true"]])
def test_cifar10_archive_tiny_resnet_end_to_end(tmp_path, layout):
    archive = _tiny_cifar_archive(tmp_path / "tiny.tar.gz")
    cache = tmp_path / "cache"
    overrides = ["data=cifar10_archive", f"data.root={archive}", f"data.cache_dir={cache}", "model=resnet18",
                 "model.width=0.0625", "model.prior_scale=0.005", "train.epochs=1", "train.batch_size=50",
                 "train.lr=0.01", "eval.num_samples=2", *layout]
    final = train.run(cfg_for(tmp_path / "run", *overrides))
    assert list(cache.glob("*.uint8.pt")), "decoded cache not written"
    assert 0.0 <= final["accuracy"] <= 1.0 and abs(final["density"] - 0.1) < 0.01

    model, guide = pyro_ssvi.load(tmp_path / "run" / "checkpoint.pt")
    assert "conv1.weight" in guide.sites and not guide.sites["conv1.weight"].sparse  # the paper's dense stem
    result = predict(model, guide, torch.randn(7, 3, 32, 32), num_samples=2)
    assert result.probs.shape == (7, 10) and result.samples.shape == (2, 7, 10)


def test_channels_last_on_an_avx2_cpu_is_ignored_with_a_message_not_a_segfault(tmp_path):
    # oneDNN's AVX2 kernels (CPUs without AVX-512, forced with ONEDNN_MAX_CPU_ISA) crash in the
    # backward of the width-0.0625 ResNet's strided 1x1 shortcut in channels_last: this command
    # ended in a segfault (rc 139) before channels_last was ignored on CPU.
    archive = _tiny_cifar_archive(tmp_path / "tiny.tar.gz")
    cmd = [sys.executable, "-m", "pyro_ssvi.train", "data=cifar10_archive", f"data.root={archive}",
           f"data.cache_dir={tmp_path / 'cache'}", "model=resnet18", "model.width=0.0625", "train.epochs=1",
           "train.batch_size=50", "eval.num_samples=1", "train.channels_last=true", "progress=false",
           f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train.channels_last=true is ignored: channels_last is a GPU layout" in proc.stdout + proc.stderr


def test_cli_default_entry_point_multirun_and_bad_config(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "pyro_ssvi.train", "-m", "method.sparsity=0.5,0.95", *FAST,
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    sparsities = sorted(json.loads(p.read_text())["config"]["method"]["sparsity"] for p in runs)
    assert sparsities == [0.5, 0.95]

    bad = subprocess.run([sys.executable, "-m", "pyro_ssvi.train", "data.name=mnist", f"hydra.run.dir={tmp_path}/bad"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "data.name='mnist'" in bad.stderr and "digits" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason=f"{SHARED_ARCHIVE} not present")
def test_cifar10_archive_real_data_two_epochs_tiny_resnet(tmp_path):
    # The whole archive is decoded and cached; training uses the first 5000 images to stay minutes.
    overrides = ["data=cifar10_archive", f"data.root={SHARED_ARCHIVE}", f"data.cache_dir={tmp_path / 'cache'}",
                 "model=resnet18", "model.width=0.0625", "train.epochs=2", "train.batch_size=128",
                 "train.lr=0.05", "data.limit_train=5000", "data.limit_test=1000", "eval.num_samples=2"]
    final = train.run(cfg_for(tmp_path / "run", *overrides))
    assert final["accuracy"] > 0.15  # above chance (0.1) after 2 short epochs
    model, guide = pyro_ssvi.load(tmp_path / "run" / "checkpoint.pt")
    assert guide.density() < 0.2


def test_bf16_training_matches_fp32_accuracy_on_digits(tmp_path):
    """bf16 autocast of the training step: test accuracy within 1.5 points of fp32 (same seed)."""
    results = {p: train.run(cfg_for(tmp_path / p, f"train.precision={p}", "train.epochs=15"))["accuracy"]
               for p in ("fp32", "bf16")}
    assert results["fp32"] >= 0.93 and abs(results["bf16"] - results["fp32"]) <= 0.015, results


def test_epoch_loss_sync_gives_the_same_run(tmp_path):
    """SSVI.step_async in the app: the same parameters and metrics as waiting for every loss."""
    runs = {mode: train.run(cfg_for(tmp_path / mode, f"train.loss_sync={mode}", "train.epochs=3"))
            for mode in ("step", "epoch")}
    assert runs["step"]["accuracy"] == runs["epoch"]["accuracy"] and runs["step"]["nll"] == runs["epoch"]["nll"]


def test_ood_auroc_in_final_metrics(tmp_path):
    final = train.run(cfg_for(tmp_path, "eval.ood=noise", "train.epochs=5"))
    assert final["ood_auroc_entropy"] > 0.8  # uniform-noise images are more uncertain than digits
    assert 0.0 <= final["ood_auroc_mutual_information"] <= 1.0
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    with pytest.raises(SSVIConfigError, match="shape"):  # before any training: no outputs
        train.run(cfg_for(tmp_path / "bad", "eval.ood=fashion_mnist", "train.epochs=1"))
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_resume_from_a_checkpoint_written_before_a_config_key_existed(tmp_path):
    train.run(cfg_for(tmp_path / "run", "train.epochs=1"))
    path = tmp_path / "run" / "checkpoint.pt"
    state = checkpoint.read(path)
    del state["config"]["train"]["loss_sync"]  # as if saved by an older pyro_ssvi
    del state["config"]["eval"]["ood"]
    for key in ("format", "version"):
        state.pop(key)
    checkpoint.save(path, state)
    final = train.run(cfg_for(tmp_path / "resumed", f"resume={path}"))
    assert final["epochs"] == 1 and 0.0 <= final["accuracy"] <= 1.0


def test_cuda_graph_run_matches_eager_run_and_writes_plain_numbers(tmp_path, monkeypatch):
    """train.cuda_graph end to end, on CPU with EagerGraph as the recorder: the same parameters and
    metrics as eager steps (both drop the last partial batch, as a graph must), plain numbers in
    metrics.jsonl (the learning rates live in tensors during a graphed run), and a resume."""
    import functools

    from pyro_ssvi.cuda_graph import EagerGraph, GraphedSteps

    monkeypatch.setattr(train, "_GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(train, "GraphedSteps", functools.partial(GraphedSteps, graph_factory=EagerGraph))
    common = ["device=cpu", "train.epochs=2", "data.limit_train=500", "method.update_interval=5", "seed=3",
              "train.drop_last=true", "train.loss_sync=epoch"]
    eager = train.run(cfg_for(tmp_path / "eager", *common))
    graphed = train.run(cfg_for(tmp_path / "graph", *common, "train.cuda_graph=true"))
    a = checkpoint.read(tmp_path / "eager" / "checkpoint.pt")
    b = checkpoint.read(tmp_path / "graph" / "checkpoint.pt")
    assert a["svi"]["surgery_log"] and a["svi"] == b["svi"]
    for k in a["guide"]:
        torch.testing.assert_close(b["guide"][k], a["guide"][k], rtol=1e-5, atol=1e-6)
    assert graphed["accuracy"] == pytest.approx(eager["accuracy"], abs=1e-3)
    rows = [json.loads(line) for line in (tmp_path / "graph" / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["lr"], float) and isinstance(r["sigma_lr"], float) for r in rows)
    assert rows[-1]["lr"] == pytest.approx(json.loads((tmp_path / "eager" / "metrics.jsonl").read_text()
                                                      .splitlines()[-1])["lr"])
    resumed = train.run(cfg_for(tmp_path / "resumed", f"resume={tmp_path / 'graph' / 'checkpoint.pt'}",
                                "train.epochs=3"))
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and isinstance(rows[-1]["lr"], float)
    assert resumed["accuracy"] >= graphed["accuracy"]
