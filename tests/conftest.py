"""Shared pytest configuration for the pyro_ssvi tests."""


def pytest_configure(config):
    # Tests marked slow (full data sets, long runs) are skipped with: pytest -m "not slow".
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")


import pyro
import pytest
import torch

# The tests' models are tiny and Python-bound; one intra-op thread avoids OpenMP threads
# spinning against each other (and against other processes) on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Validation on (it is off only in training runs), a clean param store and a fixed seed."""
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
