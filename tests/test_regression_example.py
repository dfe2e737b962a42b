"""examples/regression.py: an ordinary Pyro regression with a learned noise scale, trained by SSVI
with its defaults at 90% sparsity, against a dense AutoNormal + SVI fit of the same model."""

import importlib.util
import warnings
from pathlib import Path

import pyro

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regression.py"


def _example():
    spec = importlib.util.spec_from_file_location("regression_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diabetes_regression_matches_dense_vi_and_is_calibrated():
    ex = _example()
    pyro.enable_validation(False)
    x_train, y_train, x_test, y_test = ex.diabetes_split()
    assert (len(x_train), len(x_test)) == (342, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no objective warning, no "vars in model but not guide"
        model, guide = ex.fit_ssvi(x_train, y_train)
    assert guide.density() == 0.1 and set(guide.latent_sites) == {"sigma"}
    ssvi = ex.evaluate(model, guide, x_test, y_test)
    dense = ex.evaluate(*ex.fit_dense_baseline(x_train, y_train), x_test, y_test)
    # The acceptance of issue 11: RMSE within 10% of dense VI, 90% intervals covering 85-95%.
    assert ssvi["rmse"] <= 1.10 * dense["rmse"]
    assert 0.85 <= ssvi["coverage_90"] <= 0.95
