"""Data-parallel SSVI (pyro_ssvi.distributed): two gloo processes on CPU against one process.

The reference for every parity test is :func:`ddp_worker.train` in this process, without a
process group, on the same global batches. Tolerance: the runs are float64 and differ only in
summation order (two half-batch gradients averaged vs one global-batch sum, ~1e-16 relative per
step), which 300 steps of SGD/Adam amplify by a few orders of magnitude at most; 1e-9 absolute
is ~1e6 times that and still ~1e-7 of the parameters' scale. A mask decision that went another
way would move an entry by its whole value (O(0.1)), far outside it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddp_worker
from pyro_ssvi.distributed import DistributedSync, mask_fingerprints, resolve_distributed
from pyro_ssvi.errors import SSVIConfigError

WORKER = Path(__file__).with_name("ddp_worker.py")
ATOL = 1e-9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(scenario: str, tmp_path: Path, world_size: int = 2, timeout: float = 120.0):
    """Start ``world_size`` worker processes as torchrun would; returns (results, procs, seconds)."""
    port = _free_port()
    procs, outs = [], []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        out = tmp_path / f"rank{rank}.pt"
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    start = time.monotonic()
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=max(1.0, timeout - (time.monotonic() - start))))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{scenario}: the ranks did not finish within {timeout} s (a hang)")
    elapsed = time.monotonic() - start
    results = [torch.load(o) if o.exists() else None for o in outs]
    return results, procs, logs, elapsed


def _assert_close(a: dict, b: dict, what: str) -> float:
    worst = 0.0
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype == torch.bool:
            assert torch.equal(a[k], b[k]), f"{what}: mask {k} differs"
        else:
            diff = (a[k].double() - b[k].double()).abs().max().item()
            worst = max(worst, diff)
            assert diff <= ATOL, f"{what}: {k} differs by {diff:g} > {ATOL:g}"
    return worst


@pytest.mark.parametrize("scenario", ["sgd_lrt", pytest.param("adam_draws", marks=pytest.mark.slow)])
def test_two_ranks_match_one_process(scenario, tmp_path):
    results, procs, logs, _ = _launch(scenario, tmp_path)
    for p, (out, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    reference = ddp_worker.train(scenario, 0, 1, DistributedSync())
    rank0, rank1 = results
    assert rank0["surgery_steps"] == [40, 80, 120, 160, 200]
    # The masks are identical on both ranks after every mask update, and equal to the reference's.
    assert len(rank0["masks_after"]) == len(rank1["masks_after"]) == len(reference["masks_after"]) == 5
    for m0, m1, ref in zip(rank0["masks_after"], rank1["masks_after"], reference["masks_after"]):
        for k in m0:
            assert torch.equal(m0[k], m1[k]) and torch.equal(m0[k], ref[k])
    # The masks did change (otherwise the test would show little).
    first = reference["masks_after"][0]["1.weight"]
    assert not torch.equal(first, reference["masks_after"][-1]["1.weight"])
    # Both ranks end bitwise equal (the same averaged gradients, the same optimizer arithmetic) ...
    for part in ("guide", "model"):
        for k in rank0[part]:
            assert torch.equal(rank0[part][k], rank1[part][k]), f"{part} {k} differs between ranks"
    # ... and equal to the single process within summation-order rounding.
    worst = max(_assert_close(rank0[part], reference[part], part) for part in ("guide", "model"))
    # The averaged losses are the global batch's.
    assert max(abs(a - b) for a, b in zip(rank0["losses"], reference["losses"])) <= 1e-6
    print(f"{scenario}: max |2 ranks - 1 process| = {worst:.3g}")


def test_killed_rank_stops_the_others(tmp_path):
    results, procs, logs, elapsed = _launch("die", tmp_path, timeout=90)
    assert procs[1].returncode == -9
    assert procs[0].returncode != 0
    assert "SSVIDistributedError" in logs[0][1] and "died" in logs[0][1], logs[0][1][-2000:]
    assert elapsed < 60


@pytest.mark.slow
def test_stalled_rank_stops_the_others_after_the_timeout(tmp_path):
    port_procs = []
    start = time.monotonic()
    port = _free_port()
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        port_procs.append(subprocess.Popen([sys.executable, str(WORKER), "stall", str(tmp_path / f"r{rank}.pt")],
                                           env=env, stderr=subprocess.PIPE, text=True))
    try:
        _, err = port_procs[0].communicate(timeout=90)  # rank 1 sleeps 120 s; the timeout is 5 s
        elapsed = time.monotonic() - start
    finally:
        port_procs[1].kill()
        port_procs[1].communicate()
    assert port_procs[0].returncode != 0 and "SSVIDistributedError" in err, err[-2000:]
    assert elapsed < 60


@pytest.mark.slow
def test_batchnorm_statistics_come_from_rank_0(tmp_path):
    results, procs, logs, _ = _launch("bn", tmp_path)
    for p, (out, err) in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    own0, own1 = results[0]["buffers"]["own"], results[1]["buffers"]["own"]
    assert not torch.equal(own0["net.1.running_mean"], own1["net.1.running_mean"])  # each rank's own batch ...
    for r in results:  # ... but every step starts from rank 0's
        for k, v in r["buffers"]["next"].items():
            assert torch.equal(v, own0[k])


@pytest.mark.slow
def test_diverged_masks_raise_on_every_rank(tmp_path):
    results, procs, logs, _ = _launch("corrupt", tmp_path)
    for p, (out, err) in zip(procs, logs):
        assert p.returncode != 0
        assert "SSVIDistributedError" in err and "masks of rank 1 differ" in err, err[-2000:]
        assert "step 40" in err


def test_single_process_sync_is_a_no_op():
    sync = DistributedSync()
    assert (sync.rank, sync.world_size, sync.enabled) == (0, 1, False)
    g = [torch.ones(3)]
    sync.average_(g)
    assert torch.equal(g[0], torch.ones(3))
    assert sync.average_value(2.5) == 2.5
    assert resolve_distributed(None) is None and resolve_distributed(False) is None
    with pytest.raises(SSVIConfigError, match="distributed must be"):
        resolve_distributed("yes")
    with pytest.raises(SSVIConfigError, match="buffers must be"):
        DistributedSync(buffers="average")


def test_shared_rng_is_the_same_draw_and_restores_the_stream():
    sync = DistributedSync(seed=3)
    torch.manual_seed(0)
    with sync.shared_rng(10):
        a = torch.randn(4)
    after = torch.randn(4)
    torch.manual_seed(99)
    with sync.shared_rng(10):
        b = torch.randn(4)
    torch.manual_seed(0)
    assert torch.equal(a, b)  # the same whatever each rank's own seed
    assert torch.equal(torch.randn(4), after)  # the rank's own stream is untouched


def test_mask_fingerprints_tell_masks_apart():
    m = torch.zeros(4, 5, dtype=torch.bool)
    m.view(-1)[[1, 6, 12]] = True
    other = m.clone()
    other.view(-1)[[1, 6, 12]] = False
    other.view(-1)[[2, 5, 12]] = True  # same count, same index sum
    f, g = mask_fingerprints({"w": m}), mask_fingerprints({"w": other})
    assert f.shape == (1, 3) and f[0, 0] == 3 and f[0, 1] == 19
    assert f[0, 1] == g[0, 1] and not torch.equal(f, g)


def test_a_model_wrapped_in_ddp_is_refused(tmp_path):
    import torch.distributed as dist
    from pyro_ssvi import MaskedAutoNormal, models

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = models.mlp([4, 8, 3])
        guide = MaskedAutoNormal(model, sparsity=0.5)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with pytest.raises(SSVIConfigError, match="not DistributedDataParallel"):
            DistributedSync().prepare(ddp, guide)
    finally:
        dist.destroy_process_group()


def test_cuda_graph_steps_refuse_a_distributed_svi():
    from pyro.infer import TraceMeanField_ELBO

    from pyro_ssvi import SSVI, MaskedAutoNormal, models
    from pyro_ssvi.cuda_graph import GraphedSteps

    model = models.mlp([4, 8, 3], num_data=10)
    guide = MaskedAutoNormal(model, sparsity=0.5)
    guide(torch.randn(2, 4), torch.tensor([0, 1]))
    optim = torch.optim.SGD([*guide.parameters(), *model.parameters()], lr=0.1)
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_data=10, distributed=DistributedSync())
    with pytest.raises(SSVIConfigError, match="cuda_graph does not work with data-parallel"):
        GraphedSteps(svi)
