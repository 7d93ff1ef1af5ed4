"""Losses, each fused with its output activation in one backend kernel.

The network's last layer produces raw outputs (logits for classification); the
loss applies its `link` (softmax, logistic or nothing) inside the kernel, and
`Sequential.predict` applies the same link to give probabilities.

A loss also validates and converts the targets once per dataset (`targets`),
so the training loop only slices ready arrays.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Union

import numpy as np
from scipy.special import expit, xlogy

from .._types import Array, Backend, Config, DTypeLike
from ..backends import _checks as chk
from .training import SMALL, all_finite


def _as_array(y, name):
    if isinstance(y, (list, tuple)) or not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.dtype.kind not in "biufcm":  # bool or a number (timedelta64 is one, as np.number says)
        raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
    return y


def _check_finite(y, name):
    # all_finite: the check train_step makes of the batch too, whose code is then
    # in the cache (np.isfinite(y).all() took 65 us of the LSTM benchmark's step,
    # caches cold after the kernels)
    if y.dtype.kind == "f" and not all_finite(y):
        raise ValueError(f"{name} contains NaN or infinity")


def _columns(y, name, n_samples, n_outputs, dtype):
    """Float targets shaped (N, n_outputs): 1-D y is accepted for one output."""
    y = _as_array(y, name)
    _check_finite(y, name)
    if y.ndim == 1 and n_outputs == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape != (n_samples, n_outputs):
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}) for a model with "
                         f"{n_outputs} output(s) and {n_samples} samples"
                         + (f" (or ({n_samples},) for one output)" if n_outputs == 1 else "")
                         + f", got {y.shape}")
    cast = np.ascontiguousarray(y, dtype=dtype)
    if cast is not y:
        _check_finite(cast, name)  # a cast to float32 can overflow to inf
    return cast


def labels_in_range(y, n_classes):
    """Whether the labels y (numbers) all lie in [0, n_classes): two reductions, no
    masks (a training step checks its batch's labels with it); a few integer
    labels as Python ints (one call of NumPy's in place of two reductions:
    64 labels, caches cold after the recurrent benchmark's kernels, 6 against
    21 us)."""
    if 0 < y.size <= SMALL and y.dtype.kind in "iu":
        values = y.reshape(-1).tolist()
        return min(values) >= 0 and max(values) < n_classes
    return y.size == 0 or bool(y.min() >= 0 and y.max() < n_classes)


def _non_negative(y):
    # (NaN and +-inf fail too: NaN and -inf as the minimum, +inf as the maximum)
    return bool(y.min() >= 0) and math.isfinite(y.max())


def _in_unit_interval(y):
    return bool(y.min() >= 0 and y.max() <= 1)


def targets_kept_check(loss, y, n_outputs, labels):
    """A check of the values alone for arrays of y's dtype and shape, given that
    `loss.targets` took y as it is (returned y's own data): whether it would
    again for such an array (False: it may raise or convert; ask it). labels:
    whether y first passes the model's label encoding (a classifier with one
    label per sample), which takes y as it is for the same values. None when
    that takes more than a look at the values (the hinge's -1/+1, a loss with
    `targets` of its own)."""
    targets = type(loss).targets
    if targets is Loss.targets and not labels:  # _columns: finite values
        return all_finite
    if targets is BinaryCrossEntropy.targets:  # _columns, then [0, 1]: labels 0/1 or probabilities
        return _in_unit_interval
    if targets is PoissonLoss.targets or (targets is SoftmaxCrossEntropy.targets and y.ndim == 2):
        return _non_negative  # _columns, then >= 0 / class probabilities
    if targets is SoftmaxCrossEntropy.targets and y.dtype.kind in "iu":
        return functools.partial(labels_in_range, n_classes=n_outputs)  # _integer_labels
    return None


def _integer_labels(y, name, n_samples, n_classes):
    """(N,) int64 labels in [0, n_classes); integral floats are accepted."""
    if y.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},), got {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if np.any(y != np.round(y)):
            raise ValueError(f"{name} must hold integer class labels 0..{n_classes - 1}")
    if labels_in_range(y, n_classes):
        return np.ascontiguousarray(y, dtype=np.int64)
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(f"{name} holds label {y[bad][0].item()!r}, outside 0..{n_classes - 1}: "
                         f"the model has {n_classes} outputs, one per class")
    return np.ascontiguousarray(y, dtype=np.int64)


class Loss:
    """The base of the losses: the mean loss over samples and its gradient.

    ``loss(backend, output, targets, sample_weight, grad)`` returns the mean loss
    and writes d loss / d output into grad; it and `checked_call` run ``kernel(kernels,
    ...)``, which a subclass defines with ``kernels`` being the backend
    (validating kernels) or ``backend.fast`` (the same kernels behind their fast
    precondition): one definition for both paths.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.get_loss('mse')
    SquaredError()
    """

    name = "loss"
    link = "identity"  # activation that maps raw outputs to predictions
    classifier = False  # whether accuracy is a meaningful metric

    def targets(self, y: Array, n_samples: int, n_outputs: int, dtype: DTypeLike) -> Array:
        """Return the targets in the form the kernel takes.

        Parameters
        ----------
        y : numpy.ndarray
            The targets as given.
        n_samples : int
            The number of samples.
        n_outputs : int
            The model's outputs per sample.
        dtype : dtype
            The model's float dtype.

        Returns
        -------
        numpy.ndarray
            The targets (integer labels or float columns).

        Raises
        ------
        ValueError
            If the targets do not fit the loss or the model's outputs.
        """
        return _columns(y, "y", n_samples, n_outputs, dtype)

    def correct(self, output: Array, targets: Array) -> int:
        """Count the correct predictions in a batch (classification losses).

        Parameters
        ----------
        output : numpy.ndarray
            Raw outputs, (N, K).
        targets : numpy.ndarray
            Targets from `targets`.

        Returns
        -------
        int
            The number of correct predictions.
        """
        raise NotImplementedError

    def apply_link(self, backend: Backend, raw: Array, out: Array) -> Array:
        """Compute predictions from raw outputs: the link activation, into `out`.

        Parameters
        ----------
        backend : backend object
            Runs the activation kernel.
        raw : numpy.ndarray
            Raw outputs, (N, K).
        out : numpy.ndarray
            The predictions' buffer, (N, K).

        Returns
        -------
        numpy.ndarray
            `out`.
        """
        backend.activation_forward(raw, self.link, out=out)
        return out

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        """Compute the loss with `kernels`, its gradient written into `grad`.

        Parameters
        ----------
        kernels : backend object
            A backend (validating kernels) or its ``fast`` face.
        output : numpy.ndarray
            Raw outputs, (N, K).
        targets : numpy.ndarray
            Targets from `targets`.
        sample_weight : numpy.ndarray or None
            Per-sample weights, (N,).
        grad : numpy.ndarray
            Receives d loss / d output, (N, K).

        Returns
        -------
        float
            The mean loss.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no kernel(kernels, output, targets, "
                                  "sample_weight, grad)")

    def __call__(self, backend: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
                 grad: Array) -> float:
        return self.kernel(backend, output, targets, sample_weight, grad)

    def checked_call(self, backend: Backend, output: Array, targets: Array,
                     sample_weight: Optional[Array], grad: Array) -> float:
        """Compute the loss for arguments the model has already checked.

        Output and grad are C-contiguous (N, K) workspaces of one float dtype,
        targets from `targets` (sliced or gathered into C-contiguous arrays),
        sample_weight None or (N,) of that dtype with a positive sum: the kernels'
        fast precondition, no value scans (see fastnn.backends.spec).

        Parameters
        ----------
        backend : backend object
            The backend whose kernels run.
        output : numpy.ndarray
            Raw outputs, (N, K).
        targets : numpy.ndarray
            Targets from `targets`.
        sample_weight : numpy.ndarray or None
            Per-sample weights, (N,).
        grad : numpy.ndarray
            Receives d loss / d output, (N, K).

        Returns
        -------
        float
            The mean loss.
        """
        if type(self).kernel is Loss.kernel:  # a subclass that defines __call__ only
            return self(backend, output, targets, sample_weight, grad)
        return self.kernel(backend.fast, output, targets, sample_weight, grad)

    def config(self) -> Config:
        """Return the loss as saved.

        Returns
        -------
        dict
            Its name and options.
        """
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits).

    Targets: (N,) integer labels, or (N, C) one-hot or probability rows.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Sequential([nn.Dense(3)], loss=nn.SoftmaxCrossEntropy()).loss.link
    'softmax'
    """

    name = "softmax_cross_entropy"
    link = "softmax"
    classifier = True

    def targets(self, y: Array, n_samples: int, n_outputs: int, dtype: DTypeLike) -> Array:
        if n_outputs < 2:
            raise ValueError("softmax cross-entropy needs a last layer with at least 2 outputs; "
                             "for one output use binary_crossentropy")
        y = _as_array(y, "y")
        _check_finite(y, "y")
        if y.ndim == 1:
            return _integer_labels(y, "y", n_samples, n_outputs)
        if y.shape != (n_samples, n_outputs):
            raise ValueError(f"y must be ({n_samples},) integer labels or ({n_samples}, {n_outputs}) "
                             f"class probabilities, got shape {y.shape}")
        if (y < 0).any():
            raise ValueError("y holds negative class probabilities")
        return np.ascontiguousarray(y, dtype=dtype)

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return kernels.softmax_cross_entropy(output, targets, sample_weight, grad=grad)[0]

    def correct(self, output: Array, targets: Array) -> int:
        labels = targets if targets.ndim == 1 else targets.argmax(axis=1)
        return int(np.count_nonzero(output.argmax(axis=1) == labels))


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of sigmoid(logits) per output.

    One output for binary labels, K outputs for multilabel targets; targets in
    [0, 1].

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.BinaryCrossEntropy().link
    'logistic'
    """

    name = "binary_crossentropy"
    link = "logistic"
    classifier = True

    def targets(self, y: Array, n_samples: int, n_outputs: int, dtype: DTypeLike) -> Array:
        t = _columns(y, "y", n_samples, n_outputs, dtype)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise ValueError("y of a binary cross-entropy must lie in [0, 1] (0/1 labels or probabilities)")
        return t

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return kernels.sigmoid_binary_cross_entropy(output, targets, sample_weight, grad=grad)[0]

    def correct(self, output: Array, targets: Array) -> int:
        # per-sample fraction of outputs on the right side of 0.5
        hits = np.count_nonzero((output > 0) == (targets > 0.5))
        return hits / output.shape[1]


class SquaredError(Loss):
    """Squared error ``0.5 (output - y)^2`` summed over outputs, mean over samples.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.SquaredError().classifier
    False
    """

    name = "mse"

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return kernels.squared_error(output, targets, sample_weight, grad=grad)[0]


class AbsoluteError(Loss):
    """Absolute error ``|output - y|`` summed over outputs, mean over samples.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.get_loss('mae')
    AbsoluteError()
    """

    name = "mae"

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return kernels.absolute_error(output, targets, sample_weight, grad=grad)[0]


class Huber(Loss):
    """Huber loss with threshold delta (torch.nn.HuberLoss).

    Parameters
    ----------
    delta : float, default 1.0
        Where the loss turns from quadratic to linear.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Huber(delta=0.5)
    Huber(delta=0.5)
    """

    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        self.delta = chk.real(delta, "delta", low=0, low_open=True)

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return kernels.huber(output, targets, sample_weight, grad=grad, delta=self.delta)[0]

    def config(self) -> Config:
        """Return the loss as saved.

        Returns
        -------
        dict
            Its name and delta.
        """
        return {"name": self.name, "delta": self.delta}

    def __repr__(self):
        return f"Huber(delta={self.delta})"


class Hinge(Loss):
    """Hinge loss ``max(0, 1 - t s)`` per output.

    Targets: -1/+1 or 0/1 per output, or, with K > 1 outputs, (N,) integer labels
    (one-vs-rest).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Hinge().classifier
    True
    """

    name = "hinge"
    classifier = True

    def targets(self, y: Array, n_samples: int, n_outputs: int, dtype: DTypeLike) -> Array:
        y = _as_array(y, "y")
        if y.ndim == 1 and n_outputs > 1:
            labels = _integer_labels(y, "y", n_samples, n_outputs)
            t = np.full((n_samples, n_outputs), -1, dtype)
            t[np.arange(n_samples), labels] = 1
            return t
        t = _columns(y, "y", n_samples, n_outputs, dtype)
        values = np.unique(t)
        if np.isin(values, (0, 1)).all():
            return np.ascontiguousarray(2 * t - 1)
        if not np.isin(values, (-1, 1)).all():
            raise ValueError("y of the hinge loss must be -1/+1 or 0/1 per output")
        return t

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return kernels.hinge(output, targets, sample_weight, grad=grad)[0]

    def correct(self, output: Array, targets: Array) -> int:
        if output.shape[1] > 1:  # one-vs-rest: the highest score is the class
            return int(np.count_nonzero(output.argmax(axis=1) == targets.argmax(axis=1)))
        return int(np.count_nonzero((output > 0) == (targets > 0)))


# ------------------------------------------- scikit-learn's MLP loss values
def clipped_log_loss(output, targets, sample_weight, link):
    """scikit-learn's log loss of raw outputs (N, K): probabilities (softmax or
    logistic, computed in the outputs' dtype) clipped to [eps, 1 - eps], the
    negative log-likelihood summed over outputs, (weighted) mean over samples.
    targets: int labels (softmax) or (N, K) 0/1 targets (logistic)."""
    eps = np.finfo(output.dtype).eps
    if link == "softmax":
        e = np.exp(output - output.max(axis=1, keepdims=True))
        if targets.ndim == 1:
            p = e[np.arange(output.shape[0]), targets] / e.sum(axis=1)
            per_sample = -np.log(np.clip(p, eps, 1 - eps))
        else:
            p = np.clip(e / e.sum(axis=1, keepdims=True), eps, 1 - eps)
            per_sample = -xlogy(targets, p).sum(axis=1)
    else:
        p = np.clip(expit(output), eps, 1 - eps)
        per_sample = -(xlogy(targets, p) + xlogy(1 - targets, 1 - p)).sum(axis=1)
    return float(np.average(per_sample, weights=sample_weight))


class _ClippedLogLoss:
    """Mixin: the value of scikit-learn's log loss (probabilities clipped to
    [eps, 1 - eps]); the gradient is the unclipped one, as scikit-learn's."""

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        loss = super().kernel(kernels, output, targets, sample_weight, grad)  # type: ignore[misc]
        # Unweighted, grad is (p - target) / N, and the clip can matter only where a
        # probability is within eps of the wrong end: |p - target| >= 1 - eps (4 eps
        # for rounding); with weights, or then, the clipped value is computed.
        eps = np.finfo(output.dtype).eps
        if sample_weight is not None or np.abs(grad).max() * output.shape[0] >= 1 - 4 * eps:
            loss = clipped_log_loss(output, targets, sample_weight, self.link)  # type: ignore[attr-defined]
        return loss


class LogLoss(_ClippedLogLoss, SoftmaxCrossEntropy):
    """Log loss of softmax outputs as scikit-learn's MLP computes it (multiclass).

    Softmax cross-entropy whose value clips the probabilities to [eps, 1 - eps];
    the gradient is the unclipped one, as scikit-learn's.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.LogLoss().link
    'softmax'
    """

    name = "log_loss"


class BinaryLogLoss(_ClippedLogLoss, BinaryCrossEntropy):
    """Binary log loss as scikit-learn's MLP computes it (binary and multilabel).

    Binary cross-entropy per output whose value clips the probabilities to [eps,
    1 - eps]; the gradient is the unclipped one, as scikit-learn's.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.BinaryLogLoss().link
    'logistic'
    """

    name = "binary_log_loss"


class SquaredLoss(SquaredError):
    """Squared loss as scikit-learn's MLP computes it.

    The value is SquaredError's averaged over the outputs as well,
    ``((output - y)^2).mean() / 2``, while the gradient is SquaredError's (of the
    sum over outputs), as scikit-learn trains.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.SquaredLoss().classifier
    False
    """

    name = "squared_loss"

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        return super().kernel(kernels, output, targets, sample_weight, grad) / output.shape[1]


class PoissonLoss(Loss):
    """Half the Poisson deviance of predictions exp(output) (the log link).

    Summed over outputs, (weighted) mean over samples: scikit-learn's MLP
    'poisson' loss. Targets >= 0.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.PoissonLoss().link
    'exp'
    """

    name = "poisson"
    link = "exp"

    def targets(self, y: Array, n_samples: int, n_outputs: int, dtype: DTypeLike) -> Array:
        t = _columns(y, "y", n_samples, n_outputs, dtype)
        if t.size and t.min() < 0:
            raise ValueError("y of the Poisson loss must be >= 0")
        return t

    def kernel(self, kernels: Backend, output: Array, targets: Array, sample_weight: Optional[Array],
               grad: Array) -> float:
        # NumPy only (no kernel of the catalogue): (N, K) t log(t / pred) - t + pred with pred = exp(output)
        pred = np.exp(output)
        per_elem = xlogy(targets, targets) - targets * output - targets + pred
        n = output.shape[0]
        scale = np.full(n, 1.0 / n) if sample_weight is None else sample_weight / sample_weight.sum()
        np.multiply(pred - targets, scale[:, None], out=grad, casting="unsafe")
        return float((per_elem.sum(axis=1) * scale).sum())

    def apply_link(self, backend: Backend, raw: Array, out: Array) -> Array:
        np.exp(raw, out=out)
        return out


LOSSES = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "categorical_crossentropy": SoftmaxCrossEntropy,
    "sparse_categorical_crossentropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "binary_crossentropy": BinaryCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "mse": SquaredError,
    "squared_error": SquaredError,
    "mean_squared_error": SquaredError,
    "mae": AbsoluteError,
    "absolute_error": AbsoluteError,
    "mean_absolute_error": AbsoluteError,
    "huber": Huber,
    "hinge": Hinge,
    "log_loss": LogLoss,
    "binary_log_loss": BinaryLogLoss,
    "squared_loss": SquaredLoss,
    "poisson": PoissonLoss,
}


def get_loss(loss: Union[str, Loss]) -> Loss:
    """Return a loss from a name or a Loss.

    Parameters
    ----------
    loss : str or Loss
        A name of ``fastnn.nn.losses.LOSSES`` (``'sparse_categorical_crossentropy'``,
        ``'binary_crossentropy'``, ``'mse'``, ``'mae'``, ``'huber'``, ``'hinge'``,
        ...) or a Loss (returned as it is).

    Returns
    -------
    Loss
        The loss.

    Raises
    ------
    ValueError
        If the name is unknown.
    TypeError
        If `loss` is neither a name nor a Loss.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.get_loss("sparse_categorical_crossentropy")
    SoftmaxCrossEntropy()
    """
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a loss name or a Loss, got {type(loss).__name__}")
    return LOSSES[chk.choice(loss, "loss", LOSSES)]()


def loss_from_config(config):
    """A loss from its `config()` dict (used by `load`)."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"a loss description must be a dict with a name, got {config!r}")
    options = {k: v for k, v in config.items() if k != "name"}
    loss = get_loss(config["name"])
    try:
        return type(loss)(**options) if options else loss
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise ValueError(f"invalid options for the {config['name']} loss: {exc}") from None


def sample_weights(sample_weight, n_samples, dtype):
    """Validated (N,) weights in the model dtype, or None."""
    if sample_weight is None:
        return None
    w = _as_array(sample_weight, "sample_weight")
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}")
    w = np.ascontiguousarray(w, dtype=dtype)
    if not np.isfinite(w).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if w.sum() <= 0:
        raise ValueError("sample_weight must have a positive sum")
    return w


__all__ = [
    "AbsoluteError", "BinaryCrossEntropy", "BinaryLogLoss", "Hinge", "Huber", "LOSSES", "LogLoss", "Loss",
    "PoissonLoss", "SoftmaxCrossEntropy", "SquaredError", "SquaredLoss", "get_loss", "sample_weights",
]
