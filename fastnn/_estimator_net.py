"""The network behind `fastnn.MLPClassifier` and `fastnn.MLPRegressor`.

A stack of dense layers whose parameters live in ONE flat buffer laid out as
scikit-learn packs an MLP for L-BFGS: every weight matrix W_i (fan_in, fan_out)
first, then every bias b_i, then (with batch norm) every gamma_i and beta_i. The
gradients live in a second buffer of the same layout, so the L2 penalty is one
kernel call over the weights block and an optimizer step is one kernel call over
the whole buffer. The estimators expose W_i and b_i as views (`coefs_`,
`intercepts_`).

Every computation is a backend kernel writing into workspace arrays kept per
batch size, so a training step allocates nothing once a batch size has been seen.
The hot kernels (dense forward and backward, the losses, the L2 penalty) are
called through their implementations (`backend._dense_forward`, ...), which take
C-contiguous arrays of the network's dtype: the buffers here are allocated that
way and the estimators validate the data once per fit, so validating every call
again would only add per-step overhead.
The output layer produces raw scores; the loss kernel applies the output
activation fused with the loss (softmax + cross-entropy, logistic + binary
cross-entropy, identity + squared error; exp + Poisson deviance in NumPy).

Hidden layer i (0-based) computes, for a batch x (N, fan_in):
    without batch norm: y = act(x @ W + b)
    with batch norm:    y = act(batchnorm(x @ W + b))   (torch.nn.BatchNorm1d; b is
                    not trained, batch norm's beta is the shift)
followed in training by inverted dropout with rate dropout[i].
"""

import math

import numpy as np
from scipy.special import expit, xlogy

from .backends.reference import NEEDS_INPUT
from .nn.layers import mix64 as mix_seed

BN_MOMENTUM = 0.1  # torch.nn.BatchNorm1d's defaults
BN_EPS = 1e-5
PREDICT_CHUNK = 4096  # rows per chunk at inference: bounds memory for large X
MASK64 = (1 << 64) - 1


def dense_rows(X, rows, out):
    """Rows `rows` (an index array, or None for all) of X into `out` (n, F), for
    dense and CSR input alike."""
    if hasattr(X, "toarray"):  # scipy sparse (CSR)
        part = X if rows is None else X[rows]
        out[...] = part.toarray()
    elif rows is None:
        out[...] = X
    else:
        # mode="clip": the indices are valid, and "raise" would buffer the output
        np.take(X, rows, axis=0, out=out, mode="clip")
    return out


class Network:
    """Parameters, gradients, running statistics and workspaces of one MLP.

    layer_units: [n_features, hidden..., n_outputs]; activation: hidden-layer
    activation; loss: 'softmax' (cross-entropy, int labels), 'logistic' (binary
    cross-entropy per output), 'squared_error' or 'poisson'; dropout: one rate per
    hidden layer; batch_norm: normalise every hidden layer's pre-activation."""

    def __init__(self, layer_units, activation, loss, dtype, dropout=None, batch_norm=False):
        self.layer_units = list(layer_units)
        self.activation = activation
        self.loss = loss
        self.dtype = np.dtype(dtype)
        self.n_layers = len(layer_units) - 1
        n_hidden = self.n_layers - 1
        self.dropout = list(dropout) if dropout is not None else [0.0] * n_hidden
        self.batch_norm = bool(batch_norm)
        self._allocate()

    def _allocate(self):
        shapes = list(zip(self.layer_units[:-1], self.layer_units[1:]))
        hidden = self.layer_units[1:-1]
        self.n_weights = sum(a * b for a, b in shapes)
        size = self.n_weights + sum(b for _, b in shapes)
        if self.batch_norm:
            size += 2 * sum(hidden)
        self.params = np.zeros(size, self.dtype)
        self.grads = np.zeros(size, self.dtype)
        self.W, self.b, self.dW, self.db = [], [], [], []
        self.gamma, self.beta, self.dgamma, self.dbeta = [], [], [], []
        offset = 0

        def take(shape, into, grads_into):
            nonlocal offset
            n = math.prod(shape)
            into.append(self.params[offset:offset + n].reshape(shape))
            grads_into.append(self.grads[offset:offset + n].reshape(shape))
            offset += n

        for shape in shapes:
            take(shape, self.W, self.dW)
        for _, fan_out in shapes:
            take((fan_out,), self.b, self.db)
        if self.batch_norm:
            for units in hidden:
                take((units,), self.gamma, self.dgamma)
            for units in hidden:
                take((units,), self.beta, self.dbeta)
            for g in self.gamma:
                g[...] = 1
        self.running_mean = [np.zeros(u, self.dtype) for u in hidden] if self.batch_norm else []
        self.running_var = [np.ones(u, self.dtype) for u in hidden] if self.batch_norm else []
        self._workspaces = {}

    def _config(self):
        """The constructor's arguments, to compare networks."""
        return (self.layer_units, self.activation, self.loss, self.dtype, self.dropout, self.batch_norm)

    # pickling: the views are rebuilt from the flat buffer, workspaces dropped
    def __getstate__(self):
        return {"config": (self.layer_units, self.activation, self.loss, self.dtype.str, self.dropout,
                           self.batch_norm),
                "params": self.params, "running_mean": self.running_mean,
                "running_var": self.running_var}

    def __setstate__(self, state):
        units, act, loss, dtype, dropout, bn = state["config"]
        self.__init__(units, act, loss, np.dtype(dtype), dropout, bn)
        self.params[...] = state["params"]
        for mine, theirs in zip(self.running_mean + self.running_var,
                                state["running_mean"] + state["running_var"]):
            mine[...] = theirs

    def check_data(self, X, t, w):
        """The training data, checked once per fit because the hot loop calls
        kernel implementations that do not check: X (N, n_features) dense
        C-contiguous or CSR, t int64 labels (softmax) or (N, n_outputs), w None or
        (N,), all float arrays in the network's dtype."""
        n = X.shape[0]
        if X.dtype != self.dtype or X.shape[1] != self.layer_units[0]:
            raise TypeError(f"X must be {self.dtype} with {self.layer_units[0]} columns, got {X.dtype} "
                            f"{X.shape}")
        if not hasattr(X, "toarray") and not X.flags.c_contiguous:
            raise ValueError("X must be C-contiguous")
        if self.loss == "softmax":
            want = (np.dtype(np.int64), (n,))
        else:
            want = (self.dtype, (n, self.layer_units[-1]))
        if (t.dtype, t.shape) != want or not t.flags.c_contiguous:
            raise TypeError(f"targets must be C-contiguous {want[0]} of shape {want[1]}, "
                            f"got {t.dtype} {t.shape}")
        if w is not None and (w.dtype != self.dtype or w.shape != (n,) or not w.flags.c_contiguous):
            raise TypeError(f"sample_weight must be C-contiguous {self.dtype} of shape ({n},), got {w.dtype} "
                            f"{w.shape}")

    def clear_workspaces(self):
        self._workspaces = {}

    # ------------------------------------------------------------- workspaces
    def workspace(self, n):
        """Arrays for a batch of n rows, allocated on the first call for n."""
        ws = self._workspaces.get(n)
        if ws is not None:
            return ws
        if len(self._workspaces) >= 4:  # training uses two sizes (full and last batch)
            self._workspaces.clear()
        dt, L = self.dtype, self.n_layers
        units = self.layer_units
        empty = [None] * L
        ws = {"x": np.empty((n, units[0]), dt), "y": [np.empty((n, u), dt) for u in units[1:]],
              "dout": np.empty((n, units[-1]), dt), "pre": list(empty), "bn": list(empty),
              "cache": list(empty), "drop": list(empty), "ddrop": list(empty), "dz": list(empty),
              "dx": list(empty), "dbn": list(empty), "inputs": list(empty), "seeds": [0] * L}
        for i in range(L - 1):
            u = units[i + 1]
            if self.batch_norm:
                ws["pre"][i] = np.empty((n, u), dt)
                ws["bn"][i] = np.empty((n, u), dt)
                ws["dbn"][i] = np.empty((n, u), dt)
            elif self.activation in NEEDS_INPUT:
                ws["pre"][i] = np.empty((n, u), dt)
            if self.dropout[i] > 0:
                ws["drop"][i] = np.empty((n, u), dt)
                ws["ddrop"][i] = np.empty((n, u), dt)
            if self.activation != "identity" or self.batch_norm:
                ws["dz"][i] = np.empty((n, u), dt)
        for i in range(1, L):
            ws["dx"][i] = np.empty((n, units[i]), dt)
        self._workspaces[n] = ws
        return ws

    # ---------------------------------------------------------------- training
    def forward(self, backend, x, ws, training, seed=0, update_stats=True):
        """Raw outputs (N, n_outputs) of the batch x in training or inference mode.
        Fills ws with what backward needs."""
        a = x
        last = self.n_layers - 1
        for i in range(self.n_layers):
            ws["inputs"][i] = a
            y = ws["y"][i]
            if i == last:
                backend._dense_forward(a, self.W[i], self.b[i], "identity", y, None)
                break
            if self.batch_norm:
                pre, h = ws["pre"][i], ws["bn"][i]
                backend._dense_forward(a, self.W[i], self.b[i], "identity", pre, None)
                # a one-row batch has no batch statistics: it uses the running ones
                batch_stats = training and x.shape[0] > 1
                _, ws["cache"][i] = backend.batchnorm_forward(
                    pre, self.gamma[i], self.beta[i], self.running_mean[i], self.running_var[i],
                    batch_stats, momentum=BN_MOMENTUM if update_stats else 0.0, eps=BN_EPS, out=h)
                backend.activation_forward(h, self.activation, out=y)
            else:
                backend._dense_forward(a, self.W[i], self.b[i], self.activation, y, ws["pre"][i])
            a = y
            if training and self.dropout[i] > 0:
                ws["seeds"][i] = s = mix_seed(seed, i)
                a = backend.dropout_forward(y, self.dropout[i], s, out=ws["drop"][i])
        return ws["y"][last]

    def backward(self, backend, ws, training):
        """Gradients of the loss whose gradient w.r.t. the raw outputs is in
        ws['dout'], into the gradient buffer (weights, biases, batch-norm)."""
        d = ws["dout"]
        for i in range(self.n_layers - 1, -1, -1):
            x = ws["inputs"][i]
            dx = ws["dx"][i]  # None for the first layer: no gradient w.r.t. the data
            if i == self.n_layers - 1:
                backend._dense_backward(d, x, self.W[i], ws["y"][i], "identity", None, dx, self.dW[i],
                                        self.db[i], None)
            else:
                if training and self.dropout[i] > 0:
                    d = backend.dropout_backward(d, self.dropout[i], ws["seeds"][i], out=ws["ddrop"][i])
                if self.batch_norm:
                    dh = backend.activation_backward(d, ws["y"][i], self.activation, x=ws["bn"][i],
                                                     out=ws["dbn"][i])
                    dpre = backend.batchnorm_backward(dh, ws["cache"][i], dx=ws["dz"][i],
                                                      dgamma=self.dgamma[i], dbeta=self.dbeta[i])[0]
                    backend._dense_backward(dpre, x, self.W[i], ws["pre"][i], "identity", None, dx,
                                            self.dW[i], self.db[i], None)
                    # batch norm subtracts the batch mean, so b has no effect: its gradient
                    # is 0 up to rounding, which an adaptive solver would amplify into a
                    # random walk. beta is the layer's shift; b stays fixed.
                    self.db[i][...] = 0
                else:
                    backend._dense_backward(d, x, self.W[i], ws["y"][i], self.activation, ws["pre"][i], dx,
                                            self.dW[i], self.db[i], ws["dz"][i])
            d = dx

    def data_loss(self, backend, out, t, w, grad):
        """Mean loss of raw outputs `out` against targets t (int labels for softmax,
        (N, K) floats otherwise), sample weights w or None; writes d loss / d out
        into grad. The value follows scikit-learn's definitions (the squared error is
        averaged over outputs too, while its gradient is that of the sum over
        outputs, as scikit-learn's)."""
        if self.loss in ("softmax", "logistic"):
            if self.loss == "softmax":  # t: int64 labels in [0, n_outputs), from argmax
                loss = float(backend._softmax_cross_entropy(out, t, w, grad))
            else:
                loss = float(backend._sigmoid_binary_cross_entropy(out, t, w, grad))
            # scikit-learn clips probabilities to [eps, 1 - eps]. Unweighted, grad is
            # (p - target) / N, and the clip can matter only where a probability is
            # within eps of the wrong end: |p - target| >= 1 - eps (4 eps for rounding).
            eps = np.finfo(out.dtype).eps
            if w is not None or np.abs(grad).max() * out.shape[0] >= 1 - 4 * eps:
                loss = clipped_log_loss(out, t, w, self.loss)
            return loss
        if self.loss == "squared_error":
            return float(backend._squared_error(out, t, w, grad)) / out.shape[1]
        return poisson_deviance(out, t, w, grad)

    @staticmethod
    def penalty_rate(alpha, x, w):
        """The L2 rate of a batch: alpha / (sum of its sample weights, or its size)."""
        return alpha / (x.shape[0] if w is None else float(w.sum()))

    def loss_and_gradient(self, backend, x, t, w, ws, alpha, training=True, seed=0, update_stats=True,
                          penalty_gradient=True):
        """Forward, loss, backward and L2 penalty on one batch. The penalty is
        0.5 l2 ||W||^2 with l2 = penalty_rate(alpha, x, w), on the weight matrices
        only, as scikit-learn's. Returns the loss. penalty_gradient=False leaves
        the penalty's gradient l2 W out of the gradient buffer, for a caller that
        folds it into its optimizer step (one pass over the weights fewer)."""
        out = self.forward(backend, x, ws, training, seed, update_stats)
        if alpha and not penalty_gradient:
            # right after the forward pass, which has just read the weights, so they
            # are still in cache; the value only (the optimizer adds the gradient)
            weights = self.params[:self.n_weights]
            sq = float(np.dot(weights, weights))
        loss = self.data_loss(backend, out, t, w, ws["dout"])
        self.backward(backend, ws, training)
        if alpha:
            l2 = self.penalty_rate(alpha, x, w)
            if penalty_gradient:
                loss += float(backend._weight_penalty(self.params[:self.n_weights],
                                                      self.grads[:self.n_weights], l2, 0.0))
            else:
                loss += 0.5 * l2 * sq
        return loss

    def set_running_stats(self, backend, X):
        """Running statistics = the statistics of all of X (after L-BFGS, which
        evaluates the loss without updating them)."""
        if not self.batch_norm:
            return
        ws = self.workspace(X.shape[0])
        x = dense_rows(X, None, ws["x"]) if hasattr(X, "toarray") else X
        a = x
        for i in range(self.n_layers - 1):
            pre, h, y = ws["pre"][i], ws["bn"][i], ws["y"][i]
            backend.dense_forward(a, self.W[i], self.b[i], "identity", out=pre)
            backend.batchnorm_forward(pre, self.gamma[i], self.beta[i], self.running_mean[i],
                                      self.running_var[i], x.shape[0] > 1, momentum=1.0, eps=BN_EPS, out=h)
            a = backend.activation_forward(h, self.activation, out=y)


def clipped_log_loss(out, t, w, link):
    """scikit-learn's log loss of raw outputs out (N, K): probabilities (softmax or
    logistic, computed in out's dtype) clipped to [eps, 1 - eps], the negative
    log-likelihood summed over outputs, (weighted) mean over samples.
    t: int labels (softmax) or (N, K) 0/1 targets (logistic)."""
    eps = np.finfo(out.dtype).eps
    if link == "softmax":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        p = e[np.arange(out.shape[0]), t] / e.sum(axis=1)
        per_sample = -np.log(np.clip(p, eps, 1 - eps))
    else:
        p = np.clip(expit(out), eps, 1 - eps)
        per_sample = -(xlogy(t, p) + xlogy(1 - t, 1 - p)).sum(axis=1)
    return float(np.average(per_sample, weights=w))


def poisson_deviance(out, t, w, grad):
    """Half Poisson deviance of predictions exp(out), summed over outputs, (weighted)
    mean over samples; grad = d/d out = (exp(out) - t) scaled like the mean."""
    pred = np.exp(out)
    per_elem = xlogy(t, t) - t * out - t + pred  # = t log(t / pred) - t + pred
    scale = np.full(out.shape[0], 1.0 / out.shape[0]) if w is None else w / w.sum()
    np.multiply(pred - t, scale[:, None], out=grad, casting="unsafe")
    return float((per_elem.sum(axis=1) * scale).sum())


def predict_raw(backend, X, coefs, intercepts, activation, batch_norm=None, dtype=None):
    """Raw outputs (N, n_outputs) of an MLP in inference mode, from its layer
    lists (coefs[i] (fan_in, fan_out), intercepts[i] (fan_out,)); batch_norm: None
    or (gammas, betas, running_means, running_vars). X: dense or CSR, any float
    dtype (cast to the weights' dtype). Computed in chunks of PREDICT_CHUNK rows."""
    dtype = np.dtype(dtype or coefs[0].dtype)
    coefs = [np.ascontiguousarray(c, dtype) for c in coefs]
    intercepts = [np.ascontiguousarray(b, dtype) for b in intercepts]
    n = X.shape[0]
    result = np.empty((n, coefs[-1].shape[1]), dtype)
    for lo in range(0, n, PREDICT_CHUNK):
        hi = min(lo + PREDICT_CHUNK, n)
        part = X[lo:hi]
        a = np.ascontiguousarray(part.toarray() if hasattr(part, "toarray") else part, dtype)
        for i, (W, b) in enumerate(zip(coefs, intercepts)):
            if i == len(coefs) - 1:
                backend.dense_forward(a, W, b, "identity", out=result[lo:hi])
            elif batch_norm is not None:
                gamma, beta, mean, var = (np.ascontiguousarray(p[i], dtype) for p in batch_norm)
                z = backend.dense_forward(a, W, b, "identity")
                # training=False reads the running statistics and does not change them
                h, _ = backend.batchnorm_forward(z, gamma, beta, mean.copy(), var.copy(), False, eps=BN_EPS)
                a = backend.activation_forward(h, activation)
            else:
                a = backend.dense_forward(a, W, b, activation)
    return result


def output_activation(backend, raw, name):
    """The output activation of raw outputs: softmax, logistic, exp or identity."""
    if name == "exp":
        return np.exp(raw)
    if name == "identity":
        return raw
    return backend.activation_forward(raw, name)
