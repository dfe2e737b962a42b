"""Size of the compact posterior file (pyro_ssvi.export) against dense VI's, for the CIFAR ResNet-18.

Both files hold the same model's point estimates; dense VI (sparsity 0) stores loc and rho of
every weight, SSVI the active entries' loc and rho plus their positions. Prints the sizes and
their ratio (the guides are freshly initialized: sizes do not depend on training).

    python bench/posterior_size.py              # width 1: 11.2M weights
    python bench/posterior_size.py --width 0.25
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from pyro_ssvi import MaskedAutoNormal, export, models


def posterior_bytes(width: float, sparsity: float) -> int:
    model = models.resnet18(width=width)
    guide = MaskedAutoNormal(model, sparsity=sparsity, seed=0)
    with torch.no_grad():
        guide(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "posterior.safetensors")
        export(model, guide, path)
        return os.path.getsize(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--sparsity", type=float, default=0.9)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dense, sparse = posterior_bytes(args.width, 0.0), posterior_bytes(args.width, args.sparsity)
    print(f"ResNet-18 width {args.width:g}: dense VI posterior {dense / 2**20:.2f} MiB, SSVI at sparsity "
          f"{args.sparsity:g} {sparse / 2**20:.2f} MiB, ratio {sparse / dense:.3f}")
    return {"dense_bytes": dense, "sparse_bytes": sparse, "ratio": sparse / dense}


if __name__ == "__main__":
    main()
