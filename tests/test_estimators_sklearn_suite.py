"""scikit-learn's own MLP test suite (sklearn/neural_network/tests/test_mlp.py, as
installed) run against fastnn's estimators: a subprocess puts fastnn's classes in
place of scikit-learn's in sklearn.neural_network before pytest imports the suite.

Deselected: test_gradient, which calls private scikit-learn internals
(_loss_grad_lbfgs, _coef_indptr) that fastnn replaces with its own network; the
gradients are checked against finite differences in test_estimators_extras.py."""

import importlib.util
import os
import subprocess
import sys

import pytest

RUN_SUITE = """
import sys
import fastnn
import sklearn.neural_network as nn
nn.MLPClassifier, nn.MLPRegressor = fastnn.MLPClassifier, fastnn.MLPRegressor
import pytest
code = pytest.main(["--pyargs", "sklearn.neural_network.tests.test_mlp", "-q", "-p", "no:cacheprovider",
                    "-k", "not test_gradient", "-W", "ignore::sklearn.exceptions.ConvergenceWarning"])
import sklearn.neural_network.tests.test_mlp as suite
assert suite.MLPClassifier is fastnn.MLPClassifier and suite.MLPRegressor is fastnn.MLPRegressor
sys.exit(code)
"""


@pytest.mark.skipif(importlib.util.find_spec("sklearn.neural_network.tests") is None,
                    reason="this scikit-learn installation does not ship its tests")
def test_sklearn_mlp_suite_passes_on_fastnn(tmp_path):
    # one thread: small networks, and a steady run time on a machine whose cores are shared
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", RUN_SUITE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    tail = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, tail
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, tail
    assert int(summary.split(" passed")[0].split()[-1]) >= 50, tail
