"""Bad inputs and faults, as a newcomer meets them: each gets a one-line error that names the key
or value and what to do (or is handled correctly), and nothing written earlier is lost.

The CLI cases run ``python -m pyro_ssvi.train`` and check the exit status, the single "error:"
line and the absence of a traceback; the API cases check the exception type and message. The
kill -9 cases are slow tests.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import pyro_ssvi
from pyro_ssvi import SSVI, MaskedAutoNormal, checkpoint, models, train
from pyro_ssvi.config import compose
from pyro_ssvi.errors import (
    NonFiniteOutputError,
    SSVICheckpointError,
    SSVIConfigError,
    SSVIDataNotFoundError,
    SSVIError,
    SSVIWriteError,
)
from pyro_ssvi.predictive import predict

FAST = ["progress=false", "train.epochs=1", "data.limit_train=256", "data.limit_test=64", "eval.num_samples=2"]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def cfg_for(out: Path, *overrides: str):
    return compose([f"output_dir={out}", *FAST, *overrides])


def _digest(folder: Path) -> dict:
    """File name -> sha256 of every file below ``folder`` (what must stay intact)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(message: str) -> bool:
    return "\n" not in message.strip() and len(message) < 700


# ------------------------------------------------------------------ config values, refused before anything runs
BAD_CONFIG = [
    ("seed=99999999999", r"seed=99999999999 is not allowed; expected an integer in \[0, 4294967295\]"),
    ("seed=-1", r"seed=-1 is not allowed"),
    ("method.lrt=maybe", r"method.lrt='maybe' is not allowed; allowed values: true, false"),
    ("data.augment=sometimes", r"data.augment='sometimes' is not allowed"),
    ("progress=yes", r"progress='yes' is not allowed"),
    ("overwrite=please", r"overwrite='please' is not allowed"),
    ("+train.epoch=3", r"unknown config key 'train.epoch'; did you mean 'train.epochs'\?"),
    ("+trian.epochs=3", r"unknown config key 'trian"),
    ("+method.sparsty=0.5", r"did you mean 'method.sparsity'\?"),
    ("method.update_interval=1", r"method.update_interval=1 is not allowed with method.sparsity > 0"),
    ("method.update_interval=0", r"method.update_interval=0 is not allowed"),
    ("method.sparsity=1.0", r"method.sparsity=1.0 is not allowed; expected a number in \[0, 1\)"),
    ("method.sparsity=-0.1", r"method.sparsity=-0.1 is not allowed"),
    ("method.drop_fraction=1.5", r"method.drop_fraction=1.5 is not allowed"),
    ("method.removal=snrr", r"removal"),
    ("method.addition=random", r"addition"),
    ("method.removal_lambda=2", r"removal_lambda applies to mean_exp_abs and snr_exp_abs only"),
    ("train.epochs=0", r"train.epochs=0 is not allowed; expected an integer in \[1, inf\]"),
    ("train.batch_size=0", r"train.batch_size=0 is not allowed"),
    ("train.lr=0", r"train.lr=0 is not allowed"),
    ("train.momentum=1.0", r"train.momentum=1.0 is not allowed"),
    ("train.precision=fp16", r"train.precision='fp16' is not allowed"),
    ("train.loss_sync=sometimes", r"train.loss_sync='sometimes' is not allowed"),
    ("checkpoint.name=..", r"checkpoint.name='..' is not allowed; expected a plain file name"),
    ("checkpoint.name=sub/ckpt.pt", r"checkpoint.name='sub/ckpt.pt' is not allowed"),
    ("checkpoint.name=metrics.json", r"checkpoint.name='metrics.json' is not allowed"),
    ("checkpoint.every=-1", r"checkpoint.every=-1 is not allowed"),
    ("device=foo", r"device='foo' is not allowed; use one of: auto, cpu, cuda, cuda:N"),
    ("data.limit_train=0", r"data.limit_train=0 is not allowed"),
    ("eval.num_samples=0", r"eval.num_samples=0 is not allowed"),
    ("eval.ood=cifar1000", r"eval.ood='cifar1000' is not allowed"),
    ("model.prior_scale=0", r"model.prior_scale=0 is not allowed"),
    ("model.init_scale=-1", r"model.init_scale=-1 is not allowed"),
    ("model.hidden=[0]", r"model.hidden=\[0\] is not allowed"),
    ("cpu_threads=0", r"cpu_threads=0 is not allowed"),
    ("resume=/no/such/checkpoint.pt", r"resume='/no/such/checkpoint.pt': no such checkpoint file"),
    ("data.name=mnist", r"data.name='mnist' is not allowed"),
]


@pytest.mark.parametrize("override, message", BAD_CONFIG, ids=[o for o, _ in BAD_CONFIG])
def test_bad_config_value_is_one_line_before_anything_is_written(tmp_path, override, message):
    out = tmp_path / "run"
    with pytest.raises(SSVIConfigError, match=message) as info:
        train.run(cfg_for(out, override))
    assert _one_line(str(info.value))
    assert not out.exists()


def test_device_cuda_without_a_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SSVIConfigError, match="device='cuda' but CUDA is not available here"):
        train.run(cfg_for(tmp_path / "run", "device=cuda"))


# ------------------------------------------------------------------ values that only the data can refute
BAD_AGAINST_DATA = [
    (["train.batch_size=100000"], r"train.batch_size=100000 exceeds the 256 training examples"),
    (["data.augment=true", "data.pad=100"], r"data.pad=100 is not smaller than the 8-pixel images"),
    (["data.normalize={mean:[0.5,0.5],std:[0.2,0.2]}"], r"data.normalize does not fit the data: digits: mean/std need one value per channel \(1\), got 2/2"),
    (["data=cifar10_archive", "data.root=/no/such/cifar10.tar.gz"], r"data.root='/no/such/cifar10.tar.gz' does not exist"),
]


@pytest.mark.parametrize("overrides, message", BAD_AGAINST_DATA, ids=[" ".join(o) for o, _ in BAD_AGAINST_DATA])
def test_values_refuted_by_the_data_fail_before_anything_is_written(tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(SSVIError, match=message) as info:
        train.run(cfg_for(out, *overrides))
    assert _one_line(str(info.value))
    assert not out.exists()


def test_ood_set_of_another_shape_fails_before_training(tmp_path):
    if not FMNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    with pytest.raises(SSVIConfigError, match=r"eval.ood='fashion_mnist' has images of shape"):
        train.run(cfg_for(tmp_path / "run", "eval.ood=fashion_mnist"))
    assert not (tmp_path / "run").exists()


def test_ood_root_is_the_key_for_the_ood_data(tmp_path):
    with pytest.raises(SSVIDataNotFoundError, match=r"Fashion-MNIST file /no/where/.*eval.ood_root"):
        train.run(cfg_for(tmp_path / "run", "data=fashion_mnist", "eval.ood=fashion_mnist",
                          "eval.ood_root=/no/where", f"data.root={FMNIST}"))


# ------------------------------------------------------------------ output directories: nothing is ever lost
@pytest.fixture(scope="module")
def _finished_template(tmp_path_factory):
    out = tmp_path_factory.mktemp("template") / "run"
    train.run(cfg_for(out))
    return out


@pytest.fixture
def finished_run(tmp_path, _finished_template):
    """A finished 1-epoch digits run of its own (a copy: tests may change it)."""
    out = tmp_path / "run"
    shutil.copytree(_finished_template, out)
    state = checkpoint.read(out / "checkpoint.pt")  # its config names its own directory
    state["config"]["output_dir"] = str(out)
    for key in ("format", "version"):
        state.pop(key)
    checkpoint.save(out / "checkpoint.pt", state)
    return out


def test_a_new_run_into_a_finished_runs_directory_is_refused_and_nothing_changes(finished_run):
    before = _digest(finished_run)
    with pytest.raises(SSVIConfigError, match=r"already holds a run .*resume=.*checkpoint.pt.*overwrite=true") as info:
        train.run(cfg_for(finished_run, "train.epochs=2"))
    assert _one_line(str(info.value))
    assert _digest(finished_run) == before


def test_overwrite_true_replaces_the_old_run(finished_run):
    (finished_run / "learning_curves.png").write_bytes(b"old")
    final = train.run(cfg_for(finished_run, "train.epochs=2", "overwrite=true"))
    assert final["epochs"] == 2
    assert len((finished_run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (finished_run / "learning_curves.png").read_bytes() != b"old"


@pytest.mark.parametrize("output_dir", ["file", "under_a_file", "/proc/pyro_ssvi_cannot_create"])
def test_unusable_output_dir_is_one_line(tmp_path, output_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = {"file": blocker, "under_a_file": blocker / "run"}.get(output_dir, output_dir)
    with pytest.raises(SSVIConfigError, match="output_dir=") as info:
        train.run(cfg_for(path))
    assert _one_line(str(info.value))
    assert blocker.read_text() == "not a directory"


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.claim_run_dir.__globals__["time"], "strftime", lambda fmt: "2026-01-01" if "Y" in fmt else "12-00-00")
    first = train.run(compose([*FAST]))
    second = train.run(compose([*FAST]))
    assert first["run_dir"] == str(Path("outputs/2026-01-01/12-00-00"))
    assert second["run_dir"] == str(Path("outputs/2026-01-01/12-00-00-1"))
    for run in (first, second):
        assert len((Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_failed_run_leaves_no_empty_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SSVIConfigError):
        train.run(compose([*FAST, "train.batch_size=100000"]))
    assert not (tmp_path / "outputs").exists()


def test_stale_temporaries_of_a_killed_write_are_removed_on_the_next_start(finished_run):
    stale = finished_run / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)
    train.run(cfg_for(finished_run, "train.epochs=2", f"resume={finished_run / 'checkpoint.pt'}"))
    assert not stale.exists()
    assert "removed 1 temporary file(s)" in (finished_run / "train.log").read_text()


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_is_intact(tmp_path):
    out = tmp_path / "run"
    train.run(cfg_for(out, "train.epochs=2", "checkpoint.every=1"))
    before = _digest(out)
    real_fsync = os.fsync

    def full_on_checkpoint(fd):
        if "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    with mock.patch("os.fsync", full_on_checkpoint):
        with pytest.raises(SSVIWriteError, match=r"could not write .*checkpoint.pt: No space left on device; the "
                                                 r"previous checkpoint.pt is intact") as info:
            train.run(cfg_for(out, "train.epochs=3", f"resume={out / 'checkpoint.pt'}"))
    assert _one_line(str(info.value))
    assert _digest(out)["checkpoint.pt"] == before["checkpoint.pt"]
    assert not list(out.glob(".*.tmp"))
    assert checkpoint.read(out / "checkpoint.pt")["epoch"] == 2


# ------------------------------------------------------------------ resume: applied, refused, reproduced
@pytest.mark.parametrize("override, keys", [
    ("model=resnet18", "model.name='resnet18'"),
    ("method.sparsity=0.5", "method.sparsity=0.5 .stored 0.9."),
    ("train.lr=0.5", "train.lr=0.5"),
    ("data=fashion_mnist", "data.name"),
])
def test_resume_refuses_overrides_that_would_change_the_run(finished_run, override, keys):
    before = _digest(finished_run)
    with pytest.raises(SSVIConfigError, match=rf"these overrides would change it: .*{keys}") as info:
        train.run(compose([f"resume={finished_run / 'checkpoint.pt'}", f"output_dir={finished_run}", "progress=false",
                           override]), overrides=[override])
    assert _one_line(str(info.value))
    assert _digest(finished_run) == before


def test_resume_cannot_shrink_the_run(tmp_path):
    out = tmp_path / "run"
    train.run(cfg_for(out, "train.epochs=2"))
    with pytest.raises(SSVIConfigError, match="train.epochs=1 is fewer than the 2 epochs the checkpoint has done"):
        train.run(compose([f"resume={out / 'checkpoint.pt'}", f"output_dir={tmp_path / 'more'}", "train.epochs=1"]),
                  overrides=["train.epochs=1"])


def test_resume_extends_a_finished_run_with_more_epochs_and_new_eval_settings(finished_run):
    final = train.run(compose([f"resume={finished_run / 'checkpoint.pt'}", f"output_dir={finished_run}",
                               "progress=false", "train.epochs=3", "eval.num_samples=3"]),
                      overrides=["train.epochs=3", "eval.num_samples=3"])
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and final["epochs"] == 3
    assert rows[1]["lr"] > 0  # the cosine schedule was laid out over 3 epochs, not stopped at 1
    stored = checkpoint.read(finished_run / "checkpoint.pt")["config"]
    assert stored["train"]["epochs"] == 3 and stored["eval"]["num_samples"] == 3


def test_resuming_a_finished_run_reproduces_its_final_metrics(finished_run):
    written = json.loads((finished_run / "metrics.json").read_text())
    last_row = json.loads((finished_run / "metrics.jsonl").read_text().splitlines()[-1])
    again = train.run(compose([f"resume={finished_run / 'checkpoint.pt'}", f"output_dir={finished_run / 'again'}",
                               "progress=false"]))
    for key in ("accuracy", "nll", "ece_top_label_l1_15bin"):
        assert again[key] == written[key] == last_row[f"test_{key}"], key


@pytest.mark.parametrize("missing", ["svi", "rng", "optimizer"])
def test_checkpoint_missing_keys_cannot_be_resumed_but_says_why(finished_run, tmp_path, missing):
    state = checkpoint.read(finished_run / "checkpoint.pt")
    del state[missing]
    for key in ("format", "version"):
        state.pop(key)
    path = tmp_path / "partial.pt"
    checkpoint.save(path, state)
    with pytest.raises(SSVICheckpointError, match=rf"lacks \['{missing}'\], which resuming needs") as info:
        train.run(compose([f"resume={path}", f"output_dir={tmp_path / 'resumed'}"]))
    assert _one_line(str(info.value))
    pyro_ssvi.load(path)  # still fine for prediction


def test_checkpoint_whose_masks_contradict_its_sparsity_is_refused(finished_run, tmp_path):
    state = checkpoint.read(finished_run / "checkpoint.pt")
    state["config"]["method"]["sparsity"] = 0.5  # the masks keep 10%
    for key in ("format", "version"):
        state.pop(key)
    path = tmp_path / "contradiction.pt"
    checkpoint.save(path, state)
    for attempt in (lambda: pyro_ssvi.load(path),
                    lambda: train.run(compose([f"resume={path}", f"output_dir={tmp_path / 'r'}", "progress=false"]))):
        with pytest.raises(SSVIError, match=r"mask for site '1.weight' with \d+ active entries .* keeps \d+"):
            attempt()


def test_load_with_a_bad_device_blames_the_device_not_the_file(finished_run):
    with pytest.raises(SSVIConfigError, match=r"pyro_ssvi.load: device='foo' is not allowed"):
        pyro_ssvi.load(finished_run / "checkpoint.pt", device="foo")
    if not torch.cuda.is_available():
        with pytest.raises(SSVIConfigError, match=r"CUDA is not available here"):
            pyro_ssvi.load(finished_run / "checkpoint.pt", device="cuda")


def test_shape_mismatch_on_load_names_the_tensor_and_the_shapes(finished_run, tmp_path):
    state = checkpoint.read(finished_run / "checkpoint.pt")
    state["config"]["model"]["hidden"] = [128, 256]
    for key in ("format", "version"):
        state.pop(key)
    path = tmp_path / "other_shape.pt"
    checkpoint.save(path, state)
    with pytest.raises(SSVICheckpointError, match=r"size mismatch for .*torch.Size\(\[") as info:
        pyro_ssvi.load(path)
    assert _one_line(str(info.value))


# ------------------------------------------------------------------ the API: inputs checked at the first step
def _svi():
    model = models.mlp([4, 6, 3])
    guide = MaskedAutoNormal(model, sparsity=0.5, seed=0)
    return model, guide, SSVI(model, guide, pyro.optim.Adam({"lr": 0.01}), TraceMeanField_ELBO())


BAD_STEP_INPUTS = [
    ((torch.randn(5, 3), torch.randint(0, 3, (5,))), r"inputs x of shape \(5, 3\) do not fit the network .* 4 features"),
    ((torch.randn(5, 4), torch.randint(0, 3, (4,))), r"x holds 5 examples but y has shape \(4,\)"),
    ((torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 7])), r"labels y range over \[0, 7\] but the network has 3 outputs"),
    ((torch.randn(5, 4).double(), torch.randint(0, 3, (5,))), r"inputs x are torch.float64 but the model computes in torch.float32"),
    ((torch.randn(5, 4), torch.rand(5)), r"labels y must be an integer tensor"),
    ((), r"the model needs inputs x"),
]


@pytest.mark.parametrize("args, message", BAD_STEP_INPUTS, ids=["width", "lengths", "labels", "float64", "float labels", "no args"])
def test_bad_step_inputs_are_named_at_the_first_step(args, message):
    _, guide, svi = _svi()
    with pytest.raises(SSVIConfigError, match=message) as info:
        svi.step(*args)
    assert _one_line(str(info.value))


def test_bad_predict_inputs():
    model, guide, svi = _svi()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    svi.step(x, y)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(SSVIConfigError, match=r"predict\(\) got 1 NaN or infinite input values"):
        predict(model, guide, bad)
    with pytest.raises(SSVIConfigError, match=r"inputs x are torch.float64"):
        predict(model, guide, x.double())
    with pytest.raises(SSVIConfigError, match=r"predict\(\) needs a float tensor"):
        predict(model, guide, x.long())
    with pytest.raises(SSVIConfigError, match=r"needs a guide that is set up"):
        predict(model, MaskedAutoNormal(models.mlp([4, 6, 3]), sparsity=0.5), x)


def test_predict_from_a_diverged_model_names_the_site_and_the_cause():
    model, guide, svi = _svi()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    svi.step(x, y)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("bias")).fill_(float("inf"))  # as after divergence
    with pytest.raises(ValueError, match=r"Expected parameter logits"):
        predict(model, guide, x)  # Pyro's validation names it where the distribution is built
    with pyro.validation_enabled(False):  # as in the training app, where torch's sampler would fail natively
        with pytest.raises(NonFiniteOutputError, match=r"the probs of observation site 'obs' are NaN or infinite in "
                           r"24 of 24 entries.*training diverged") as info:
            predict(model, guide, x)
    assert _one_line(str(info.value))


def test_svi_load_state_dict_of_the_wrong_thing():
    _, _, svi = _svi()
    for bad in ({}, {"step": 3}, [1, 2]):
        with pytest.raises(SSVIConfigError, match="SSVI.load_state_dict needs the dict of SSVI.state_dict"):
            svi.load_state_dict(bad)


# ------------------------------------------------------------------ the command line: exit 2, one line, no traceback
def _cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "pyro_ssvi.train", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.parametrize("args, message", [
    (["+train.epoch=3"], "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    (["seed=99999999999"], "seed=99999999999 is not allowed"),
    (["checkpoint.name=.."], "checkpoint.name='..' is not allowed"),
])
def test_cli_bad_values_exit_2_with_one_line(tmp_path, args, message):
    proc = _cli(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {message}"] or (len(errors) == 1 and message in errors[0]), proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cli_refuses_a_directory_holding_a_run_and_keeps_it(tmp_path):
    out = tmp_path / "run"
    ok = _cli(tmp_path, f"output_dir={out}", *FAST)
    assert ok.returncode == 0, ok.stderr[-2000:]
    before = _digest(out)
    proc = _cli(tmp_path, f"output_dir={out}", *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "already holds a run" in proc.stderr and _one_line(proc.stderr)
    assert _digest(out) == before


def test_cli_sweep_with_output_dir_keeps_every_job(tmp_path):
    out = tmp_path / "sweep"
    proc = _cli(tmp_path, "-m", "method.sparsity=0.5,0.9", f"output_dir={out}", *FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sparsities = sorted(json.loads((out / str(k) / "metrics.json").read_text())["config"]["method"]["sparsity"]
                        for k in (0, 1))
    assert sparsities == [0.5, 0.9]


# ------------------------------------------------------------------ kill -9 (slow)
def _start(tmp_path, out, *args):
    return subprocess.Popen([sys.executable, "-m", "pyro_ssvi.train", f"output_dir={out}", "progress=false", *args],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(path: Path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before writing " + str(path)
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_loses_nothing_and_resumes(tmp_path):
    out = tmp_path / "run"
    proc = _start(tmp_path, out, "train.epochs=40", "data.limit_train=512")
    _wait_for(out / "checkpoint.pt", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = checkpoint.read(out / "checkpoint.pt")  # complete, never half-written
    assert 1 <= state["epoch"] < 40
    final = train.run(compose([f"resume={out / 'checkpoint.pt'}", f"output_dir={out}", "progress=false"]))
    assert final["epochs"] == 40 and len((out / "metrics.jsonl").read_text().splitlines()) == 40


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    out = tmp_path / "run"
    # ResNet checkpoints (12 MB) take long enough to write that a kill usually lands inside one;
    # when it lands between writes, the checkpoint must be intact all the same, and we try again.
    for attempt in range(6):
        proc = _start(tmp_path, out, "model=resnet18", "model.width=0.25", "train.epochs=50", "data.limit_train=64",
                      "data.limit_test=32", "eval.num_samples=1", "train.batch_size=32", "overwrite=true")
        _wait_for(out / "checkpoint.pt", proc)
        deadline = time.time() + 20
        while not list(out.glob(".checkpoint.pt.*.tmp")) and time.time() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        checkpoint.read(out / "checkpoint.pt")  # the previous checkpoint, complete
        if list(out.glob(".checkpoint.pt.*.tmp")):
            break
        (out / "checkpoint.pt").unlink()
    else:
        pytest.fail("six kills in a row missed every checkpoint write")
    train.run(compose([f"resume={out / 'checkpoint.pt'}", f"output_dir={out}", "progress=false"]), overrides=[])
    assert not list(out.glob(".*.tmp"))
    assert "removed 1 temporary file(s)" in (out / "train.log").read_text()
