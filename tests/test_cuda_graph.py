"""The CUDA-graph step runner (pyro_ssvi.cuda_graph), on CPU with EagerGraph as the recorder:
the same training as eager steps, recordings after every mask update, no sync in a recorded step."""

import dataclasses
import gc
import math

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.cuda_graph import EagerGraph, GraphedSteps, sgd_step
from pyro_ssvi.errors import NonFiniteLossError, SSVIConfigError

STEPS, INTERVAL = 23, 6


def _training(graphed: bool, batches):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = models.mlp([6, 16, 3], num_data=64).double()
    guide = MaskedAutoNormal(model, sparsity=0.75, seed=0, init_scale=0.05)
    guide(*batches[0])
    optim = torch.optim.SGD([{"params": guide.loc_parameters() + list(model.parameters()), "weight_decay": 5e-4},
                             {"params": guide.rho_parameters(), "weight_decay": 0.0}],
                            lr=0.05, momentum=0.9, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lambda t: 0.5 * (1 + math.cos(math.pi * t / STEPS)))
    svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_steps=STEPS, update_interval=INTERVAL,
               kl_max=0.5, kl_warmup=0.5, num_data=64)
    runner = GraphedSteps(svi, warmup=1, graph_factory=EagerGraph) if graphed else None
    torch.manual_seed(1)
    losses = []
    for t in range(STEPS):
        x, y = batches[t % len(batches)]
        losses.append(runner.step(x, y) if graphed else svi.step_async(x, y))
        scheduler.step()
    svi.check_finite()
    return guide, model, torch.stack([torch.as_tensor(v) for v in losses]), runner


def test_graphed_steps_train_exactly_as_eager_steps():
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
               for _ in range(4)]
    guide, model, losses, _ = _training(False, batches)
    g_guide, g_model, g_losses, runner = _training(True, batches)
    # Mask updates at steps 6 and 12 (update_end = 0.75 * 23): recorded again after each one.
    assert len(runner.svi.surgery_log) == 2 and runner.recordings == 3
    torch.testing.assert_close(g_losses, losses, rtol=1e-10, atol=1e-12)
    for (name, a), (_, b) in zip(guide.state_dict().items(), g_guide.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
    for a, b in zip(model.state_dict().values(), g_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def _tensors_with_autograd_history() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o) and o.grad_fn is not None)


def test_no_autograd_graph_outlives_a_step():
    """A graph alive between steps keeps the parameters' gradient accumulators, and on CUDA their
    stream, from an earlier step: a capture then fails. The guide's prototype trace once did."""
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))]
    before = _tensors_with_autograd_history()
    _, _, losses, runner = _training(True, batches)  # set-up, 23 steps (recorded and eager), 2 mask updates
    assert losses.grad_fn is None
    assert _tensors_with_autograd_history() == before
    assert runner.svi.guide.prototype_trace.nodes["_RETURN"]["value"].grad_fn is None


def test_sgd_step_is_torch_sgd_with_tensor_learning_rates():
    torch.manual_seed(0)
    ps = [torch.randn(5, requires_grad=True, dtype=torch.float64) for _ in range(3)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ref = torch.optim.SGD([{"params": ps[:2], "weight_decay": 1e-2}, {"params": ps[2:], "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9)
    ours = torch.optim.SGD([{"params": qs[:2], "weight_decay": 1e-2}, {"params": qs[2:], "weight_decay": 0.0}],
                           lr=0.1, momentum=0.9)
    for step in range(4):
        grads = [torch.randn(5, dtype=torch.float64) for _ in ps]
        for p, q, grad in zip(ps, qs, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        ref.step()
        if step == 0:
            ours.step()  # creates the momentum buffers
            for group in ours.param_groups:
                group["lr"] = torch.tensor(group["lr"], dtype=torch.float64)
        else:
            sgd_step(ours)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


def test_a_non_finite_loss_in_a_recorded_step_is_reported_at_the_next_check():
    batches = [(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,)))]
    _, _, _, runner = _training(True, batches)
    svi = runner.svi
    svi.schedule = dataclasses.replace(svi.schedule, update_end=1)  # no more mask updates
    x, y = batches[0]
    runner.step(x, y)
    runner.step(torch.full_like(x, float("nan")), y)
    with pytest.raises(NonFiniteLossError, match="not finite"):
        svi.check_finite()


def test_other_optimizers_are_refused_with_a_clear_error():
    model = models.mlp([6, 16, 3])
    guide = MaskedAutoNormal(model, sparsity=0.75)
    guide(torch.randn(2, 6), torch.tensor([0, 1]))
    svi = SSVI(model, guide, torch.optim.Adam(guide.parameters()), TraceMeanField_ELBO())
    with pytest.raises(SSVIConfigError, match="SGD"):
        GraphedSteps(svi)


def test_app_refuses_cuda_graph_without_cuda(tmp_path):
    from pyro_ssvi import train
    from pyro_ssvi.config import compose

    cfg = compose([f"output_dir={tmp_path}", "progress=false", "device=cpu", "train.cuda_graph=true"])
    with pytest.raises(SSVIConfigError, match="needs a CUDA device"):
        train.run(cfg, overrides=[])
    assert not any(tmp_path.iterdir())  # nothing written
