"""The work of each benchmark, whichever library does it: the inputs
(setup(shape, dtype) -> dict of named arrays from a fixed seed, inputs and
preallocated outputs), the network of the end-to-end benchmarks, the flops of
the GEMM-bound ones and their bare GEMMs (the floor of any implementation of
the same math on this BLAS).

NumPy only (scikit-learn when `fit_quietly` first runs): it never imports
fastnn, so the peer baselines (peers.py) that build on it do not either.
"""

import numpy as np


def _rng():
    return np.random.default_rng(1234)


# softmax cross-entropy, integer labels, forward + backward
def softmax_ce_setup(shape, dtype):
    n, c = shape
    rng = _rng()
    return {
        "logits": (3 * rng.standard_normal((n, c))).astype(dtype),
        "labels": rng.integers(0, c, n),  # int64
        "grad": np.empty((n, c), dtype),
    }


# batch norm in training, forward + backward
def batchnorm_setup(shape, dtype):
    n, c = shape
    rng = _rng()
    return {
        "x": rng.standard_normal((n, c)).astype(dtype),
        "dy": rng.standard_normal((n, c)).astype(dtype),
        "gamma": rng.uniform(0.5, 1.5, c).astype(dtype),
        "beta": rng.standard_normal(c).astype(dtype),
        "running_mean": np.zeros(c, dtype),
        "running_var": np.ones(c, dtype),
        "y": np.empty((n, c), dtype),
        "dx": np.empty((n, c), dtype),
        "dgamma": np.empty(c, dtype),
        "dbeta": np.empty(c, dtype),
    }


# optimizer steps over one flat parameter buffer
def adam_setup(shape, dtype):
    (n,) = shape
    rng = _rng()
    return {
        "param": rng.standard_normal(n).astype(dtype),
        "grad": rng.standard_normal(n).astype(dtype),
        "m": np.zeros(n, dtype),
        "v": np.zeros(n, dtype),
    }


def sgd_setup(shape, dtype):
    (n,) = shape
    rng = _rng()
    return {
        "param": rng.standard_normal(n).astype(dtype),
        "grad": rng.standard_normal(n).astype(dtype),
        "velocity": np.zeros(n, dtype),
    }


# dense layer with ReLU, forward + backward (dx, dW, db)
def dense_setup(shape, dtype):
    n, n_in, n_out = shape
    rng = _rng()
    return {
        "x": rng.standard_normal((n, n_in)).astype(dtype),
        "W": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype),
        "b": rng.standard_normal(n_out).astype(dtype),
        "dy": rng.standard_normal((n, n_out)).astype(dtype),
        "y": np.empty((n, n_out), dtype),
        "dx": np.empty((n, n_in), dtype),
        "dW": np.empty((n_in, n_out), dtype),
        "db": np.empty(n_out, dtype),
        "dz": np.empty((n, n_out), dtype),
    }


def dense_flops(shape):
    n, n_in, n_out = shape
    return 3 * 2 * n * n_in * n_out  # x @ W, x.T @ dz, dz @ W.T


def dense_gemms(a):
    """The three matmuls of dense_call alone."""
    x, W, y, dy, dx, dW = (a[k] for k in ("x", "W", "y", "dy", "dx", "dW"))

    def gemms():
        np.matmul(x, W, out=y)
        np.matmul(x.T, dy, out=dW)
        np.matmul(dy, W.T, out=dx)

    return gemms


# elementwise kernels on a flat array
def elementwise_setup(shape, dtype):
    rng = _rng()
    return {"x": rng.standard_normal(shape).astype(dtype), "out": np.empty(shape, dtype)}


# end to end: one training epoch of a 784-512-256-10 ReLU network, batch 256, Adam
NET_UNITS = (784, 512, 256, 10)
NET_BATCH = 256


def network_setup(shape, dtype):
    rng = _rng()
    n, n_in = shape
    return {"X": rng.standard_normal((n, n_in)).astype(dtype),
            "y": rng.integers(0, NET_UNITS[-1], n)}


def network_flops(shape, units=NET_UNITS):
    """Flops of one epoch's GEMMs over shape[0] samples: per layer the forward
    product, dW and dx (2 n in out each), without the first layer's dx."""
    pairs = list(zip(units[:-1], units[1:]))
    return sum(2 * shape[0] * i * o * (2 if k == 0 else 3) for k, (i, o) in enumerate(pairs))


def network_gemms(a, units=NET_UNITS, batch_size=NET_BATCH):
    """The matrix products of one training epoch alone, into preallocated arrays:
    the floor of any implementation of the same math on this BLAS."""
    X = a["X"]
    rng = np.random.default_rng(1)
    W = [rng.uniform(-0.1, 0.1, (i, o)).astype(X.dtype) for i, o in zip(units[:-1], units[1:])]
    dW = [np.empty_like(w) for w in W]
    sizes = {min(batch_size, X.shape[0] - lo) for lo in range(0, X.shape[0], batch_size)}
    outs = {n: [np.empty((n, w.shape[1]), X.dtype) for w in W] for n in sizes}
    dxs = {n: [np.empty((n, w.shape[0]), X.dtype) for w in W] for n in sizes}

    def epoch():
        for lo in range(0, X.shape[0], batch_size):
            x = X[lo:lo + batch_size]
            h, dx = outs[x.shape[0]], dxs[x.shape[0]]
            inputs = [x] + h[:-1]
            for k, w in enumerate(W):
                np.matmul(inputs[k], w, out=h[k])
            for k in reversed(range(len(W))):  # h[k] stands in for dz: same shape and cost
                np.matmul(inputs[k].T, h[k], out=dW[k])
                if k:
                    np.matmul(h[k], W[k].T, out=dx[k])

    return epoch


MLP_PARAMS = dict(hidden_layer_sizes=NET_UNITS[1:-1], batch_size=NET_BATCH, solver="adam",
                  max_iter=1, shuffle=True, random_state=0)


def fit_quietly(estimator, X, y):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)
