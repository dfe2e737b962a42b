"""The compact posterior file: exact predictions after a round trip, its size, and bad files."""

import json
import os
import sys

import pyro
import pytest
import torch
from torch import nn

from pyro_ssvi import MaskedAutoNormal, SSVIConfigError, export, load_posterior, models
from pyro_ssvi.errors import SSVICheckpointError
from pyro_ssvi.export import _positions, _unpack
from pyro_ssvi.predictive import predict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


def _trained(model, x, y, sparsity=0.9, steps=5):
    from pyro.infer import TraceMeanField_ELBO

    from pyro_ssvi import SSVI

    guide = MaskedAutoNormal(model, sparsity=sparsity, init_scale=0.1, seed=0)
    svi = SSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO(), update_interval=2)
    for _ in range(steps):
        svi.step(x, y)
    return guide


@pytest.mark.parametrize("sparsity", [0.9, 0.99, 0.0])  # bitmask positions, int32 indices, dense
def test_round_trip_predicts_exactly_as_the_in_memory_guide(tmp_path, sparsity):
    model = models.mlp([6, 64, 32, 3])
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    guide = _trained(model, x, y, sparsity)
    export(model, guide, tmp_path / "p.safetensors", metadata={"normalization": {"mean": [0.1]}})
    loaded_model, loaded_guide = load_posterior(tmp_path / "p.safetensors")
    for name in guide.sites:
        assert torch.equal(loaded_guide.site_mask(name), guide.site_mask(name))
    pyro.set_rng_seed(7)
    expected = predict(model, guide, x, num_samples=4)
    pyro.set_rng_seed(7)
    got = predict(loaded_model, loaded_guide, x, num_samples=4)
    assert torch.equal(expected.samples, got.samples)


def test_regression_with_a_noise_latent_round_trips(tmp_path):
    model = models.mlp([3, 16, 1], likelihood="normal")
    x, y = torch.randn(30, 3), torch.randn(30)
    guide = _trained(model, x, y)
    export(model, guide, tmp_path / "r.safetensors")
    loaded_model, loaded_guide = load_posterior(tmp_path / "r.safetensors")
    assert set(loaded_guide.latent_sites) == {"sigma"}
    pyro.set_rng_seed(1)
    expected = predict(model, guide, x, num_samples=3)
    pyro.set_rng_seed(1)
    got = predict(loaded_model, loaded_guide, x, num_samples=3)
    assert torch.equal(expected.mean, got.mean) and torch.equal(expected.total_variance, got.total_variance)


def test_a_resnet_with_batchnorm_and_a_bayesianized_net_passed_in(tmp_path):
    model = models.resnet18(width=0.0625)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    guide = _trained(model, x, y, steps=2)
    export(model, guide, tmp_path / "rn.safetensors")
    loaded_model, loaded_guide = load_posterior(tmp_path / "rn.safetensors")
    model.eval()
    pyro.set_rng_seed(2)
    expected = predict(model, guide, x, num_samples=2)
    pyro.set_rng_seed(2)
    assert torch.equal(expected.samples, predict(loaded_model, loaded_guide, x, num_samples=2).samples)

    net = models.bayesianize(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)))
    x, y = torch.randn(6, 5), torch.randint(0, 2, (6,))
    guide = _trained(net, x, y, sparsity=0.5)
    export(net, guide, tmp_path / "b.safetensors")
    with pytest.raises(SSVIConfigError, match="only models.mlp and models.resnet18 record how they were built"):
        load_posterior(tmp_path / "b.safetensors")
    skeleton = models.bayesianize(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)))
    _, loaded = load_posterior(tmp_path / "b.safetensors", model=skeleton)
    assert torch.equal(loaded.site_mask("0.weight"), guide.site_mask("0.weight"))


def test_positions_pick_the_smaller_encoding():
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[torch.randperm(1000)[:10]] = True  # 1%: 40 bytes of indices < 125 bytes of bitmask
    kind, stored = _positions(mask)
    assert kind == "index" and stored.dtype == torch.int32 and torch.equal(_unpack(kind, stored, mask.shape), mask)
    mask[torch.randperm(1000)[:100]] = True  # ~10%: a bitmask of 125 bytes beats 400 bytes
    kind, stored = _positions(mask.reshape(10, 100))
    assert kind == "bitmask" and stored.numel() == 125
    assert torch.equal(_unpack(kind, stored, torch.Size([10, 100])), mask.reshape(10, 100))


def test_resnet18_posterior_file_is_a_fraction_of_dense_vi():
    from posterior_size import main

    sizes = main(["--width", "1", "--sparsity", "0.9"])
    assert sizes["ratio"] <= 0.2  # 9.96 MiB against 85.27 MiB: 0.117


def test_bad_files_give_one_clear_error_each(tmp_path):
    model = models.mlp([4, 8, 3])
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    guide = _trained(model, x, y, sparsity=0.5, steps=1)
    good = tmp_path / "good.safetensors"
    export(model, guide, good)
    data = good.read_bytes()

    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(500))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + header_size])
    meta = json.loads(header["__metadata__"]["pyro_ssvi"])
    meta["version"] = 99
    header["__metadata__"]["pyro_ssvi"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "future.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + header_size:])
    cases = {
        "missing.safetensors": "does not exist",
        "truncated.safetensors": "truncated, corrupt or not written by pyro_ssvi.export",
        "noise.safetensors": "truncated, corrupt or not written by pyro_ssvi.export",
        "foreign.safetensors": "truncated, corrupt or not written by pyro_ssvi.export",
        "future.safetensors": "has version 99; this pyro_ssvi .* reads version 1",
    }
    for name, message in cases.items():
        with pytest.raises(SSVICheckpointError, match=message) as info:
            load_posterior(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(SSVICheckpointError, match="another architecture"):
        load_posterior(good, model=models.mlp([4, 9, 3]))
