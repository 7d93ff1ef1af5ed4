"""Choosing a network's size by cross-validation: score each size in order,
stop at the first whose error rises significantly above the best so far,
refit the best size on all the training data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from .._types import ArrayLike
from .fitting import build


@dataclass
class SizeSelection:
    """The result of `select_size`.

    Parameters
    ----------
    sizes : list
        The sizes scored, in order.
    errors : list of float
        Their mean cross-validated error.
    stderrs : list of float
        Its standard error over the folds.
    best_size : object
        The chosen size.
    stopped_at : object
        The size whose error rose (None: every size was scored).
    model : Sequential
        The best size refitted on all the training data.
    test_error : float, optional
        Its error on the test set (None without one).

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.SizeSelection(sizes=[8, 16], errors=[0.2, 0.1]).errors
    [0.2, 0.1]
    """

    sizes: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    stderrs: list = field(default_factory=list)
    best_size: Any = None
    stopped_at: Any = None
    model: Any = None
    test_error: Optional[float] = None


def _error(model, history):
    """Classification error (1 - accuracy) when the model reports accuracy, else the loss."""
    if "val_accuracy" in history:
        return 1.0 - history["val_accuracy"][-1]
    return history["val_loss"][-1]


def select_size(build_model: Any, sizes: Sequence[Any], X: ArrayLike, y: Optional[ArrayLike], cv: int = 5,
                tolerance: Optional[float] = None, epochs: int = 10, X_test: Optional[ArrayLike] = None,
                y_test: Optional[ArrayLike] = None, seed: int = 0, **fit_kwargs: Any) -> SizeSelection:
    """Choose a network's size by cross-validation, growing it until the error rises.

    Each size of `sizes` (in the order given, e.g. growing widths) is built by
    ``build_model(size)`` and scored by cv-fold cross-validation: the
    classification error (1 - accuracy) when the model reports accuracy, else the
    loss. The loop stops at the first size whose mean error exceeds the best so
    far by more than `tolerance`. The best size is refitted on all of `X`, `y` and
    scored on (`X_test`, `y_test`) when given.

    Parameters
    ----------
    build_model : callable
        ``build_model(size) -> Sequential``, a compiled model of that size.
    sizes : sequence
        The sizes to try, in order.
    X : array_like
        The training inputs.
    y : array_like
        The training targets.
    cv : int, default 5
        The number of folds.
    tolerance : float, optional
        How far above the best error a size may score before the loop stops
        (None: the best's standard error over the folds, the one-standard-error
        rule).
    epochs : int, default 10
        The epochs of each fit.
    X_test : array_like, optional
        Test inputs, for the refitted best size's test error.
    y_test : array_like, optional
        Test targets.
    seed : int, default 0
        Seeds the folds.
    **fit_kwargs : object
        Further keyword arguments of each `Sequential.fit`.

    Returns
    -------
    SizeSelection
        The sizes scored, their errors and standard errors, the best size, where
        the loop stopped, the refitted model and its test error.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn, tune
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(120, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(np.int64)
    >>> def build(width):
    ...     return nn.Sequential([nn.Dense(width, "relu"), nn.Dense(2)],
    ...                          loss="sparse_categorical_crossentropy", seed=0)
    >>> result = tune.select_size(build, [2, 8], X, y, cv=2, epochs=2, verbose=0)
    >>> result.sizes[0], result.best_size in (2, 8)
    (2, True)
    """
    from sklearn.model_selection import KFold

    X, y = np.asarray(X), np.asarray(y)
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes is empty")
    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise ValueError(f"cv must be an integer >= 2, got {cv!r}")
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 or None, got {tolerance!r}")
    fit_kwargs = {"verbose": 0, **fit_kwargs}
    folds = list(KFold(cv, shuffle=True, random_state=seed).split(X))
    result = SizeSelection()
    best = None  # index into result.sizes
    for size in sizes:
        errors = []
        for train, val in folds:
            model = build(build_model, size)
            history = model.fit(X[train], y[train], epochs=epochs, validation_data=(X[val], y[val]),
                                **fit_kwargs)
            errors.append(_error(model, history))
        mean, stderr = float(np.mean(errors)), float(np.std(errors, ddof=1) / math.sqrt(cv))
        result.sizes.append(size)
        result.errors.append(mean)
        result.stderrs.append(stderr)
        if best is None or mean < result.errors[best]:
            best = len(result.sizes) - 1
            continue
        allowed = result.stderrs[best] if tolerance is None else tolerance
        if mean > result.errors[best] + allowed:
            result.stopped_at = size
            break
    result.best_size = result.sizes[best]  # type: ignore[index]
    result.model = build(build_model, result.best_size)
    result.model.fit(X, y, epochs=epochs, **fit_kwargs)
    if X_test is not None:
        logs = result.model.evaluate(X_test, y_test)
        result.test_error = 1.0 - logs["accuracy"] if "accuracy" in logs else logs["loss"]
    return result
