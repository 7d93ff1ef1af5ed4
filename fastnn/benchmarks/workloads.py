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


# end to end: one training epoch of a small CNN on synthetic 28 x 28 x 1 images,
# batch 64, Adam. A network is a tuple of layers: ("conv", filters, kernel, padding)
# (ReLU), ("pool", size) (max pooling), ("dense", units) (ReLU but the last).
LENET = (("conv", 6, 5, 2), ("pool", 2), ("conv", 16, 5, 0), ("pool", 2),
         ("dense", 120), ("dense", 84), ("dense", 10))
CONVNET = (("conv", 32, 3, 1), ("pool", 2), ("conv", 64, 3, 1), ("pool", 2), ("dense", 10))
CNN_BATCH = 64
CNN_IMAGE = (28, 28, 1)


def cnn_setup(shape, dtype):
    rng = _rng()
    return {"X": rng.standard_normal(shape).astype(dtype), "y": rng.integers(0, 10, shape[0])}


def cnn_gemms_of(layers, batch, image=CNN_IMAGE):
    """The GEMMs of one training step of `layers` on `batch` images: a list of
    (rows, inner, cols, first) per convolution or dense layer, the forward
    product (rows, inner) @ (inner, cols) over the im2col matrix (rows = batch *
    output pixels, inner = kh * kw * C_in) or the dense input; the backward does
    dW and, but for the first layer (first=True), dx of the same size."""
    h, w, c = image
    gemms, flat = [], None
    for layer in layers:
        if layer[0] == "conv":
            _, filters, k, pad = layer
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            gemms.append((batch * h * w, k * k * c, filters, not gemms))
            c = filters
        elif layer[0] == "pool":
            h, w = h // layer[1], w // layer[1]
        else:
            flat = h * w * c if flat is None else flat
            gemms.append((batch, flat, layer[1], not gemms))
            flat = layer[1]
    return gemms


def cnn_flops(layers):
    """flops(shape) of one epoch's GEMMs over shape[0] images, in steps of CNN_BATCH."""
    def flops(shape):
        n = shape[0]
        steps = [CNN_BATCH] * (n // CNN_BATCH) + ([n % CNN_BATCH] if n % CNN_BATCH else [])
        return sum(2 * m * k * o * (2 if first else 3)
                   for b in steps for m, k, o, first in cnn_gemms_of(layers, b, shape[1:]))
    return flops


def cnn_gemms(layers):
    """bare(arrays): the matrix products of one training epoch of `layers`
    alone, on column matrices built once (their contents do not change the
    time), into preallocated arrays: the floor of an im2col implementation of
    the same network on this BLAS."""
    def bare(a):
        X = a["X"]
        rng = np.random.default_rng(1)
        steps = {}  # batch size -> [(cols, W, out, dW, dcols or None)]
        for lo in range(0, X.shape[0], CNN_BATCH):
            b = min(CNN_BATCH, X.shape[0] - lo)
            if b not in steps:
                steps[b] = [(rng.standard_normal((m, k)).astype(X.dtype),
                             rng.uniform(-0.1, 0.1, (k, o)).astype(X.dtype),
                             np.empty((m, o), X.dtype), np.empty((k, o), X.dtype),
                             None if first else np.empty((m, k), X.dtype))
                            for m, k, o, first in cnn_gemms_of(layers, b, X.shape[1:])]

        def epoch():
            for lo in range(0, X.shape[0], CNN_BATCH):
                gemms = steps[min(CNN_BATCH, X.shape[0] - lo)]
                for cols, W, out, _, _ in gemms:
                    np.matmul(cols, W, out=out)
                for cols, W, out, dW, dcols in reversed(gemms):  # out stands in for dz
                    np.matmul(cols.T, out, out=dW)
                    if dcols is not None:
                        np.matmul(out, W.T, out=dcols)

        return epoch

    return bare


# end to end: one epoch (cases.EstimatorEpoch) of the small MLPClassifiers most
# scikit-learn users train (issue 24), Adam, batch 200: the digits (8 x 8 images,
# 10 classes) and synthetic tabular data of 54 features (10 continuous, 44
# binary) and 7 classes.
SMALL_BATCH = 200
SMALL_PARAMS = dict(batch_size=SMALL_BATCH, solver="adam", shuffle=True, random_state=0)
TABULAR_CLASSES = 7


def digits_setup(shape, dtype):
    """The first shape[0] of scikit-learn's digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    n, n_in = shape
    if n > X.shape[0] or n_in != X.shape[1]:
        raise ValueError(f"the digits are {X.shape[0]} x {X.shape[1]}, shape {shape} asked")
    return {"X": np.ascontiguousarray(X[:n] / 16, dtype=dtype), "y": y[:n]}


def tabular_setup(shape, dtype):
    """Tabular data shaped like scikit-learn's covtype: 10 standard-normal columns
    and shape[1] - 10 binary ones (one in five set), labels the argmax of a fixed
    linear map of them plus noise (learnable, every class present)."""
    rng = _rng()
    n, n_in = shape
    dense = rng.standard_normal((n, min(10, n_in)))
    binary = (rng.random((n, n_in - dense.shape[1])) < 0.2).astype(np.float64)
    X = np.hstack([dense, binary])
    scores = X @ rng.standard_normal((n_in, TABULAR_CLASSES)) + rng.standard_normal((n, TABULAR_CLASSES))
    return {"X": X.astype(dtype), "y": np.argmax(scores, axis=1)}


def mlp_units(n_in, hidden, classes):
    return (n_in,) + tuple(hidden) + (classes,)


def mlp_epoch_flops(hidden, classes):
    """flops(shape) of one epoch's GEMMs of an MLPClassifier with `hidden`."""
    return lambda shape: network_flops(shape, mlp_units(shape[1], hidden, classes))


def mlp_epoch_gemms(hidden, classes):
    """bare(arrays): the GEMMs of one such epoch alone (network_gemms)."""
    return lambda a: network_gemms(a, mlp_units(a["X"].shape[1], hidden, classes), SMALL_BATCH)
