"""Predictive uncertainty of an SSVI posterior: entropy / mutual information, calibration, OOD.

Trains the default run (90%-sparse Bayesian MLP on digits; pass a checkpoint path to skip),
reloads it with ``pyro_ssvi.load``, and compares in-distribution test digits with two
out-of-distribution sets: uniform noise images and upside-down digits.

    python examples/uncertainty.py [path/to/checkpoint.pt]
"""
import sys
from pathlib import Path

import torch

import pyro_ssvi
from pyro_ssvi import checkpoint, train
from pyro_ssvi.config import compose
from pyro_ssvi.data import load_dataset
from pyro_ssvi.metrics import classification_metrics, ood_auroc, plot_reliability_diagram
from pyro_ssvi.predictive import predict

out = Path("outputs/uncertainty")
path = Path(sys.argv[1]) if len(sys.argv) > 1 else out / "checkpoint.pt"
if not path.exists():
    train.run(compose([f"output_dir={out}", "progress=false"]))

model, guide = pyro_ssvi.load(path)  # no training code involved from here on
norm = checkpoint.read(path)["normalization"]  # the training split's statistics
test = load_dataset("digits", split="test")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Raw pixels [N, C, H, W] (0..scale) -> the network's input."""
    mean, std = torch.tensor(norm["mean"]).view(1, -1, 1, 1), torch.tensor(norm["std"]).view(1, -1, 1, 1)
    return (images.float() / norm["scale"] - mean) / std


torch.manual_seed(0)
sets = {
    "test digits": normalize(test.images),
    "uniform noise": normalize(torch.rand(len(test), *test.images.shape[1:]) * norm["scale"]),
    "upside-down digits": normalize(test.images.flip(-2)),
}
results = {name: predict(model, guide, x, num_samples=20) for name, x in sets.items()}

metrics = classification_metrics(results["test digits"].probs, test.labels)
print(f"test digits: accuracy {metrics['accuracy']:.3f}, NLL {metrics['nll']:.3f}, "
      f"ECE {metrics['ece_top_label_l1_15bin']:.3f}, paper calibration error {metrics['calibration_error_paper']:.4f}")
plot_reliability_diagram(results["test digits"].probs, test.labels, out / "reliability_20draws.png")
print(f"reliability diagram: {out / 'reliability_20draws.png'}")

print(f"{'set':<20} {'entropy':>8} {'MI':>8} {'AUROC(entropy)':>15} {'AUROC(MI)':>10}")
ref = results["test digits"]
for name, r in results.items():
    row = f"{name:<20} {r.entropy.mean():8.3f} {r.mutual_information.mean():8.4f}"
    if name != "test digits":  # out-of-distribution examples are the positives
        row += f" {ood_auroc(ref.entropy, r.entropy):15.3f} {ood_auroc(ref.mutual_information, r.mutual_information):10.3f}"
    print(row)
