"""``torchrun -m pyro_ssvi.train`` with two gloo processes: outputs, resume, and set-up errors.

The torchrun tests are slow (three to four launches of two processes); the pieces they rely on
(shards, batch split, world-size check) are tested here without processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pyro_ssvi import checkpoint
from pyro_ssvi.config import compose
from pyro_ssvi.errors import SSVIConfigError
from pyro_ssvi.training.distributed import Ranks, check_distributed_config, shard_indices

WORKER = Path(__file__).with_name("ddp_app_worker.py")
# 512 examples, global batch 64 (32 per rank): 8 steps per epoch; a mask update every 3 steps.
COMMON = ["train.epochs=3", "data.limit_train=512", "train.batch_size=64", "method.update_interval=3",
          "method.update_end=1.0", "seed=3", "checkpoint.every=1", "progress=false", "cpu_threads=1"]


def test_shards_are_disjoint_equal_and_cover_the_data():
    shards = [shard_indices(10, r, 3, seed=4) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(10 / 3), padded with 2 repeats
    counts = torch.bincount(torch.cat(shards), minlength=10)
    assert counts.min() == 1 and counts.max() == 2 and (counts == 2).sum() == 2  # all, 2 repeated once
    assert torch.equal(shards[1], shard_indices(10, 1, 3, seed=4))  # the same on every rank


def test_global_batch_must_split_evenly():
    assert Ranks(0, 4).local_batch(128) == 32
    with pytest.raises(SSVIConfigError, match="batch_size=130 is the global batch.*multiple of 4"):
        Ranks(1, 4).local_batch(130)


def test_resume_needs_the_same_world_size():
    Ranks(0, 2).check_resume({"world_size": 2}, "c.pt")
    Ranks().check_resume({}, "c.pt")  # written before world_size was stored: one process
    with pytest.raises(SSVIConfigError, match=r"written by 2 process\(es\) and this run has 1.*nproc_per_node=2"):
        Ranks().check_resume({"world_size": 2}, "c.pt")
    with pytest.raises(SSVIConfigError, match="this run has 2.*one process"):
        Ranks(1, 2).check_resume({"world_size": 1}, "c.pt")


def test_distributed_config_is_checked():
    check_distributed_config(compose())
    with pytest.raises(SSVIConfigError, match="distributed.timeout_s must be a positive"):
        check_distributed_config(compose(["distributed.timeout_s=0"]))
    with pytest.raises(SSVIConfigError, match="distributed.sync_batchnorm must be true or false"):
        check_distributed_config(compose(["distributed.sync_batchnorm=yes"]))
    with pytest.raises(SSVIConfigError, match="sync_batchnorm=true needs CUDA"):
        Ranks(0, 2).convert_sync_batchnorm(torch.nn.BatchNorm1d(3), compose(["distributed.sync_batchnorm=true"]),
                                           torch.device("cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*overrides: str, interrupt_at: int = 0, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", SSVI_TEST_INTERRUPT_AT=str(interrupt_at))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}",
           str(WORKER), *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_writes_once_and_resumes_bit_identically(tmp_path):
    full = _torchrun(*COMMON, f"output_dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # rank 1 claimed no directory
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 64 and metrics["steps"] == 24
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    log = (tmp_path / "full" / "train.log").read_text()
    assert log.count("epoch 3/3") == 1  # one process logs

    cut = _torchrun(*COMMON, f"output_dir={tmp_path / 'cut'}", interrupt_at=3)
    assert cut.returncode != 0
    assert checkpoint.read(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2  # stopped before writing epoch 3's
    resumed = _torchrun(f"resume={tmp_path / 'cut' / 'checkpoint.pt'}", f"output_dir={tmp_path / 'resumed'}",
                        "progress=false", "cpu_threads=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = checkpoint.read(tmp_path / "full" / "checkpoint.pt")
    b = checkpoint.read(tmp_path / "resumed" / "checkpoint.pt")
    assert a["world_size"] == b["world_size"] == 2 and len(a["rank_states"]) == 2
    for part in ("guide", "model"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["svi"] == b["svi"] and len(a["svi"]["surgery_log"]) == 7  # steps 3, 6, ..., 21
    final = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert final["accuracy"] == metrics["accuracy"] and final["nll"] == metrics["nll"]

    # One process cannot continue a two-process run.
    cfg = OmegaConf.to_container(compose([f"resume={tmp_path / 'cut' / 'checkpoint.pt'}",
                                          f"output_dir={tmp_path / 'single'}", "progress=false"]))
    one = subprocess.run([sys.executable, "-m", "pyro_ssvi.train", f"resume={cfg['resume']}",
                          f"output_dir={cfg['output_dir']}", "progress=false"], capture_output=True, text=True,
                         timeout=120)
    assert one.returncode == 2 and "written by 2 process(es) and this run has 1" in one.stderr
    assert not (tmp_path / "single").exists()


@pytest.mark.slow
def test_the_user_loop_example_runs_under_torchrun():
    example = Path(__file__).parents[1] / "examples" / "ddp_mlp.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", str(example)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if "process(es)" in ln)
    assert line.startswith("2 process(es)") and float(line.split("accuracy ")[1].split(",")[0]) > 0.9
