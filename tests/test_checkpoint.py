"""Checkpoints: atomic writes, clear errors for bad files, RNG state, load() for prediction."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_ssvi
from pyro_ssvi import checkpoint, train
from pyro_ssvi.config import compose
from pyro_ssvi.data import load_dataset
from pyro_ssvi.errors import SSVICheckpointError
from pyro_ssvi.predictive import predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of a 2-epoch digits run (SSVI, 90% sparse)."""
    out = tmp_path_factory.mktemp("run")
    train.run(compose([f"output_dir={out}", "progress=false", "train.epochs=2", "method.update_interval=10"]))
    return out / "checkpoint.pt"


def _state(value: float = 1.0) -> dict:
    return {"config": {}, "data_info": {}, "epoch": 1, "guide": {"w": torch.full((3,), value)}, "model": {}}


def test_save_read_roundtrip_with_format_tag(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _state(2.0))
    state = checkpoint.read(path)
    assert state["format"] == checkpoint.FORMAT and state["version"] == checkpoint.VERSION
    assert torch.equal(state["guide"]["w"], torch.full((3,), 2.0))
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def _write_raw_pickle(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("hello, I am a text file\n"), "cannot be read"),
    (lambda p: torch.save({"weights": torch.ones(2)}, p), "not a pyro_ssvi checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), "not a pyro_ssvi checkpoint"),
    (_write_raw_pickle, "cannot be read"),
    (lambda p: torch.save(SystemExit("arbitrary object"), p), "not a pyro_ssvi checkpoint"),
    (lambda p: torch.save({**_state(), "format": checkpoint.FORMAT, "version": 99}, p), "version 99"),
    (lambda p: torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION}, p), "lacks the keys"),
])
def test_bad_files_give_a_clear_error_naming_the_path(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(SSVICheckpointError) as info:
        checkpoint.read(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert info.value.__cause__ is None  # no chained torch stack trace


def test_truncated_real_checkpoint(trained, tmp_path):
    data = trained.read_bytes()
    for size in (len(data) // 2, len(data) - 100, 200):
        cut = tmp_path / f"cut{size}.pt"
        cut.write_bytes(data[:size])
        with pytest.raises(SSVICheckpointError, match="truncated, corrupt"):
            checkpoint.read(cut)
        with pytest.raises(SSVICheckpointError):
            pyro_ssvi.load(cut)


def test_exception_during_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _state(1.0))

    def partial_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", partial_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, _state(5.0))
    monkeypatch.undo()
    assert torch.equal(checkpoint.read(path)["guide"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["c.pt"]


def test_process_killed_during_save_leaves_old_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _state(1.0))
    script = textwrap.dedent(f"""
        import os, signal, torch
        from pyro_ssvi import checkpoint
        def dying_save(obj, f):
            f.write(b"PK\\x03\\x04" + b"x" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.torch.save = dying_save
        checkpoint.save({str(path)!r}, {{"config": {{}}, "data_info": {{}}, "epoch": 9, "guide": {{}}, "model": {{}}}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    state = checkpoint.read(path)
    assert state["epoch"] == 1 and torch.equal(state["guide"]["w"], torch.ones(3))


def test_rng_state_roundtrip():
    state = checkpoint.get_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_contents(trained):
    state = checkpoint.read(trained)
    for key in ("guide", "model", "optimizer", "scheduler", "svi", "loader", "rng", "config", "history"):
        assert key in state, key
    assert any(k.startswith("mask_buffers.") for k in state["guide"])
    assert any(k.startswith("locs.") for k in state["guide"]) and any(k.startswith("rhos.") for k in state["guide"])
    assert state["svi"]["step_count"] == 2 * 23 and state["svi"]["surgery_log"]
    assert state["config"]["method"]["sparsity"] == 0.9 and state["epoch"] == 2


def test_load_returns_model_and_guide_ready_for_predict(trained):
    model, guide = pyro_ssvi.load(trained)
    state = checkpoint.read(trained)
    for name, mask in guide.masks.items():
        assert torch.equal(mask, state["guide"]["mask_buffers." + name.replace(".", "__")])
    assert abs(guide.density() - 0.1) < 1e-3 and not model.training
    test = load_dataset("digits", split="test")
    norm = state["normalization"]
    x = (test.images.float() / norm["scale"] - torch.tensor(norm["mean"]).view(1, -1, 1, 1)) / torch.tensor(
        norm["std"]).view(1, -1, 1, 1)
    probs = predict(model, guide, x, num_samples=5).probs
    accuracy = (probs.argmax(-1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(state["history"][-1]["test_accuracy"], abs=0.05)
    assert accuracy > 0.2  # chance is 0.1; two epochs of digits reach about 0.4-0.5
