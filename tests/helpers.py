"""Small shared pieces for the core tests: digits data and a tiny CNN."""

from __future__ import annotations

import torch
from torch import nn

from pyro_ssvi import models


def digits_split(test_size: float = 0.2):
    """sklearn digits as standardized float features: (x_train [N,64], y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=0, stratify=y)
    xtr, xte = (torch.tensor(a, dtype=torch.float32) / 16 for a in (xtr, xte))
    mean, std = xtr.mean(0), xtr.std(0) + 1e-3
    return (xtr - mean) / std, torch.tensor(ytr), (xte - mean) / std, torch.tensor(yte)


def small_cnn(num_data=None, prior_scale=1.0):
    """Two convolutions and a linear layer on [B, 1, 8, 8] inputs, as a Bayesian classifier."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )
    return models.bayesianize(net, prior_scale=prior_scale, num_data=num_data)
