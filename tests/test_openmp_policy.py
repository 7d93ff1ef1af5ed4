"""Importing and running fastnn leaves the process's OpenMP policy to the user.

Each test starts a child process with a chosen environment, imports fastnn, runs
parallel kernels on every compiled backend, then loads GNU OpenMP the way another
library would (PyTorch where installed, and libgomp itself through ctypes), with
OMP_DISPLAY_ENV=VERBOSE: libgomp prints the wait policy and spin count it read
as it initialised. fastnn must neither change OMP_WAIT_POLICY nor have a libgomp
initialised with another policy than the user's, whichever of fastnn and
PyTorch is imported first; FASTNN_GLOBAL_OMP_PASSIVE=1 opts in to the passive
policy for the whole process."""

import ctypes.util
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import fastnn
from fastnn.backends import GLOBAL_OMP_PASSIVE_ENV

TORCH = importlib.util.find_spec("torch") is not None
GOMP = ctypes.util.find_library("gomp")
pytestmark = pytest.mark.skipif(not (TORCH or GOMP), reason="no GNU OpenMP to load")

# argv[1]: "fastnn-first" or "torch-first". Prints the OMP_WAIT_POLICY the
# process sees at the end as JSON; libgomp prints its settings to stderr.
CHILD = """
import ctypes, json, os, sys
import numpy as np

def run_fastnn():
    import fastnn
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    for name in fastnn.available_backends():
        backend = fastnn.get_backend(name)
        backend.activation_forward(x, "tanh")  # above every parallel threshold
        backend.adam_step(x.copy(), x, np.zeros_like(x), np.zeros_like(x), 1, 1e-3)

def run_openmp_users():
    if {gomp!r}:
        ctypes.CDLL({gomp!r})
    if {torch}:
        import torch
        torch.ones(1000, 1000).sum()

if sys.argv[1] == "fastnn-first":
    run_fastnn()
    run_openmp_users()
else:
    run_openmp_users()
    run_fastnn()
print(json.dumps(os.environ.get("OMP_WAIT_POLICY")))
"""


def run_child(order, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", GLOBAL_OMP_PASSIVE_ENV)}
    env.update(env_changes, OMP_DISPLAY_ENV="VERBOSE")
    # the worktree's fastnn, with its compiled extension, from any folder
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(fastnn.__file__))
    child = subprocess.run([sys.executable, "-c", CHILD.format(gomp=GOMP, torch=TORCH), order],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    settings = [line.split("=", 1)[1].strip().strip("'") for line in child.stderr.splitlines()
                if line.strip().startswith(("OMP_WAIT_POLICY =", "GOMP_SPINCOUNT ="))]
    policies, spins = settings[0::2], settings[1::2]
    assert policies, "no libgomp initialised in the child: " + child.stderr[-2000:]
    return json.loads(child.stdout.splitlines()[-1]), policies, spins


@pytest.mark.parametrize("order", ["fastnn-first", "torch-first"])
def test_the_users_active_policy_reaches_every_openmp_runtime(order):
    seen, policies, spins = run_child(order, OMP_WAIT_POLICY="ACTIVE")
    assert seen == "ACTIVE"
    assert set(policies) == {"ACTIVE"} and "0" not in spins


@pytest.mark.parametrize("order", ["fastnn-first", "torch-first"])
def test_without_a_policy_openmp_keeps_its_default_spin(order):
    seen, _, spins = run_child(order)
    assert seen is None  # fastnn set nothing
    # libgomp's default: spin a while (GOMP_SPINCOUNT 300000), not the passive 0
    assert "0" not in spins


def test_global_passive_policy_is_an_explicit_opt_in():
    seen, policies, spins = run_child("fastnn-first", **{GLOBAL_OMP_PASSIVE_ENV: "1"})
    assert seen == "PASSIVE"
    assert set(policies) == {"PASSIVE"} and set(spins) == {"0"}
