"""Cost of SSVI's KL term (forward + backward) over a ResNet-18's weights: masked dense vs active-only.

Both compute the same number: sum over active entries of KL(N(mu, sigma^2) || N(0, s_p^2)).
"dense-masked" evaluates it on every entry and multiplies by the 0/1 mask; "active-only"
(what MaskedAutoNormal does for sparse sites) gathers the active entries first. Includes the
softplus of every rho, which both need.

    python bench/kl_cost.py [--width 1.0] [--sparsity 0.9] [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.distributions import kl_divergence

from pyro_ssvi import MaskedAutoNormal, models
from pyro_ssvi.distributions import masked_normal_kl


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = models.resnet18(width=args.width).to(device)
    guide = MaskedAutoNormal(model, sparsity=args.sparsity)
    guide(torch.randn(1, 3, 32, 32, device=device), torch.zeros(1, dtype=torch.long, device=device))
    layers = {m.site_name: m for m in model.modules() if isinstance(m, models.BayesianLayer)}

    def active_only():
        return sum(kl_divergence(guide.get_distribution(n), layers[n].weight_prior()) for n in guide.sites)

    def dense_masked():
        total = 0.0
        for n in guide.sites:
            q = guide.get_distribution(n).base_dist
            total = total + masked_normal_kl(q.loc, q.scale, q.indicator, 0.0, layers[n].prior_scale).sum()
        return total

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for name, fn in (("dense-masked", dense_masked), ("active-only", active_only)):
        fn().backward()  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn().backward()
        sync()
        results[name] = (time.perf_counter() - t0) / args.repeats * 1e3
    weights = sum(i.numel for i in guide.sites.values())
    for name, ms in results.items():
        print(f"{name:13s} {ms:8.1f} ms per KL forward+backward ({weights:,} weights, sparsity {args.sparsity}, "
              f"{device}, {torch.get_num_threads()} thread(s))")
    print(f"active-only / dense-masked: {results['active-only'] / results['dense-masked']:.2f}")
    return results


if __name__ == "__main__":
    main()
