"""Metrics reported by `Sequential.fit` and `evaluate`, by Keras's names.

    model.compile(metrics=["accuracy", nn.metrics.TopKAccuracy(k=3), nn.metrics.F1(average="macro")])

A metric accumulates sums over batches (`update`) and gives its value from them
(`result`). It reads the batch outputs the loop already has (the last layer's
raw outputs, before the loss's link) and the targets in the loss's form, so no
extra forward pass is made; sample weights are not applied (Keras's `metrics`,
not its `weighted_metrics`).

On validation data (and in `evaluate`) every metric is exact: the sums are
those of the whole data at the epoch-end parameters. On training data the
batches are seen as the parameters change during the epoch, so a training
metric is the metric of those batch outputs (Keras's convention): counts for
accuracy, precision, recall and F1 (a confusion matrix summed over batches),
sums for the errors and R^2, and for AUC the scores of every batch kept for the
epoch (N floats) and ranked once at its end.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Callable, List, Union

import numpy as np
from scipy.stats import rankdata

from .._types import Array, Config
from ..backends import _checks as chk

if TYPE_CHECKING:  # for annotations only
    from .losses import Loss


class Metric:
    """The base of the metrics: sums over batches and a value from them.

    ``name`` is the key in logs and history (``'val_' + name`` on validation
    data); ``classification`` says whether it needs a classification loss (else a
    regression loss). Subclasses define `reset`, `update` and `result`.

    Examples
    --------
    >>> from fastnn import nn
    >>> metric = nn.metrics.get_metric("accuracy").fresh()
    >>> metric.name, metric.classification
    ('accuracy', True)
    """

    name = "metric"
    classification = True

    def fresh(self) -> Metric:
        """Return a copy with empty sums (one per training run or evaluation).

        Returns
        -------
        Metric
            The copy.
        """
        metric = copy.copy(self)
        metric.reset()
        return metric

    def reset(self) -> None:
        """Empty the sums."""
        raise NotImplementedError

    def update(self, loss: Loss, output: Array, targets: Array) -> None:
        """Add a batch to the sums.

        Parameters
        ----------
        loss : Loss
            The model's loss (how to read outputs and targets).
        output : numpy.ndarray
            The batch's raw outputs (N, K), before the loss's link.
        targets : numpy.ndarray
            The batch's targets, as `Loss.targets` gives them.
        """
        raise NotImplementedError

    def result(self) -> float:
        """Return the metric's value from the sums so far.

        Returns
        -------
        float
            The value.
        """
        raise NotImplementedError

    def check(self, loss: Loss, n_outputs: int) -> None:
        """Check that the metric applies to a loss and output width.

        Parameters
        ----------
        loss : Loss
            The model's loss.
        n_outputs : int
            The model's outputs per sample.

        Raises
        ------
        ValueError
            If it does not apply.
        """
        if self.classification != loss.classifier:
            what = "a classification" if self.classification else "a regression"
            raise ValueError(f"the {self.name} metric needs {what} loss, got {loss.name}")

    def config(self) -> Union[str, Config]:
        """Return the metric as saved.

        Returns
        -------
        str or dict
            Its name, or a dict with its name and options.
        """
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"


# ------------------------------------------------------ reading the outputs
def true_classes(loss, targets):
    """The class index (N,) of each sample of a single-label classifier's targets
    (in the loss's form): the label, the argmax of a row, or for one output
    whether the target is on the positive side (> 0.5; > 0 for the hinge's -1/+1)."""
    if targets.ndim == 1:
        return targets
    if targets.shape[1] == 1:
        return (targets[:, 0] > (0 if loss.name == "hinge" else 0.5)).astype(np.int64)
    return targets.argmax(axis=1)


def class_indices(loss, output, targets):
    """(true, predicted) class indices (N,) of a single-label classifier: argmax
    over several outputs, the sign of one output (logit > 0: class 1)."""
    pred = (output[:, 0] > 0).astype(np.int64) if output.shape[1] == 1 else output.argmax(axis=1)
    return true_classes(loss, targets), pred


def n_classes(loss, n_outputs):
    return 2 if n_outputs == 1 else n_outputs


def single_label(metric, loss, n_outputs):
    if loss.link == "logistic" and n_outputs > 1:
        raise ValueError(f"the {metric.name} metric needs one label per sample; this model has "
                         f"{n_outputs} independent sigmoid outputs (multilabel)")


def predictions(loss, output):
    """A regression loss's predictions from raw outputs (its link applied)."""
    return np.exp(output) if loss.link == "exp" else output


# --------------------------------------------------------------- classification
class Accuracy(Metric):
    """The fraction of correct predictions, as the loss counts them (Loss.correct).

    For several sigmoid outputs, the fraction of correct outputs.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.Accuracy().name
    'accuracy'
    """

    name = "accuracy"

    def reset(self) -> None:
        self.correct = self.seen = 0

    def update(self, loss: Loss, output: Array, targets: Array) -> None:
        self.correct += loss.correct(output, targets)
        self.seen += output.shape[0]

    def result(self) -> float:
        return self.correct / self.seen


class TopKAccuracy(Metric):
    """The fraction of samples whose true class is among the k highest outputs.

    Keras's sparse_top_k_categorical_accuracy.

    Parameters
    ----------
    k : int, default 5
        How many of the highest outputs count.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.TopKAccuracy(k=3)
    TopKAccuracy(k=3)
    """

    name = "top_k_accuracy"

    def __init__(self, k: int = 5) -> None:
        self.k = chk.integer(k, "k", low=1)

    def check(self, loss: Loss, n_outputs: int) -> None:
        super().check(loss, n_outputs)
        if n_outputs < 2:
            raise ValueError("the top_k_accuracy metric needs one output per class (at least 2)")
        single_label(self, loss, n_outputs)

    def reset(self) -> None:
        self.correct = self.seen = 0

    def update(self, loss: Loss, output: Array, targets: Array) -> None:
        true = targets if targets.ndim == 1 else targets.argmax(axis=1)
        true_score = output[np.arange(output.shape[0]), true]
        # the true class is in the top k when fewer than k outputs beat it
        above = np.count_nonzero(output > true_score[:, None], axis=1)
        self.correct += int(np.count_nonzero(above < self.k))
        self.seen += output.shape[0]

    def result(self) -> float:
        return self.correct / self.seen

    def config(self) -> Union[str, Config]:
        return {"name": self.name, "k": self.k}

    def __repr__(self):
        return f"TopKAccuracy(k={self.k})"


class _Confusion(Metric):
    """The base of precision, recall and F1: a confusion matrix summed over batches.

    The (C, C) matrix of counts has rows true, columns predicted. A 0/0 ratio
    counts as 0 (scikit-learn's zero_division default).

    Parameters
    ----------
    average : {'auto', 'binary', 'macro'}, default 'auto'
        'binary': of class 1 (the second of classes_); 'macro': the mean over the
        classes present in the true or predicted labels (scikit-learn's); 'auto':
        binary for two classes, macro for more.
    """

    # declared for the checker: the counts summed so far (None before the first batch), and the
    # score per class each subclass defines
    counts: Any
    per_class: Callable[[Array, Array, Array], Array]

    def __init__(self, average: str = "auto") -> None:
        self.average = chk.choice(average, "average", ("auto", "binary", "macro"))

    def check(self, loss: Loss, n_outputs: int) -> None:
        super().check(loss, n_outputs)
        single_label(self, loss, n_outputs)
        if self.average == "binary" and n_classes(loss, n_outputs) != 2:
            raise ValueError(f"average='binary' needs two classes; this model has {n_outputs}: "
                             "use average='macro'")

    def reset(self) -> None:
        self.counts = None

    def update(self, loss: Loss, output: Array, targets: Array) -> None:
        c = n_classes(loss, output.shape[1])
        true, pred = class_indices(loss, output, targets)
        counts = np.bincount(true * c + pred, minlength=c * c).reshape(c, c)
        self.counts = counts if self.counts is None else self.counts + counts

    def result(self) -> float:
        counts = self.counts
        tp = np.diag(counts).astype(np.float64)
        predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
        scores = self.per_class(tp, predicted - tp, actual - tp)
        if self.average == "binary" or (self.average == "auto" and len(tp) == 2):
            return float(scores[1])
        present = (predicted + actual) > 0
        return float(scores[present].mean())

    @staticmethod
    def _ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    def config(self) -> Union[str, Config]:
        return self.name if self.average == "auto" else {"name": self.name, "average": self.average}

    def __repr__(self):
        return f"{type(self).__name__}(average={self.average!r})"


class Precision(_Confusion):
    """Precision: tp / (tp + fp), binary or macro-averaged (scikit-learn's precision_score).

    Parameters
    ----------
    average : {'auto', 'binary', 'macro'}, default 'auto'
        'binary': of class 1; 'macro': the mean over the classes present; 'auto':
        binary for two classes, macro for more.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.Precision(average="macro")
    Precision(average='macro')
    """
    name = "precision"

    def per_class(self, tp: Array, fp: Array, fn: Array) -> Array:
        """Return the metric of each class from its counts.

        Parameters
        ----------
        tp : numpy.ndarray
            True positives per class.
        fp : numpy.ndarray
            False positives per class.
        fn : numpy.ndarray
            False negatives per class.

        Returns
        -------
        numpy.ndarray
            The metric per class.
        """
        return self._ratio(tp, tp + fp)


class Recall(_Confusion):
    """Recall: tp / (tp + fn), binary or macro-averaged (scikit-learn's recall_score).

    Parameters
    ----------
    average : {'auto', 'binary', 'macro'}, default 'auto'
        'binary': of class 1; 'macro': the mean over the classes present; 'auto':
        binary for two classes, macro for more.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.Recall()
    Recall(average='auto')
    """
    name = "recall"

    def per_class(self, tp: Array, fp: Array, fn: Array) -> Array:
        """Return the metric of each class from its counts.

        Parameters
        ----------
        tp : numpy.ndarray
            True positives per class.
        fp : numpy.ndarray
            False positives per class.
        fn : numpy.ndarray
            False negatives per class.

        Returns
        -------
        numpy.ndarray
            The metric per class.
        """
        return self._ratio(tp, tp + fn)


class F1(_Confusion):
    """F1 score: 2 tp / (2 tp + fp + fn), binary or macro-averaged (scikit-learn's f1_score).

    Parameters
    ----------
    average : {'auto', 'binary', 'macro'}, default 'auto'
        'binary': of class 1; 'macro': the mean over the classes present; 'auto':
        binary for two classes, macro for more.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.F1()
    F1(average='auto')
    """
    name = "f1"

    def per_class(self, tp: Array, fp: Array, fn: Array) -> Array:
        """Return the metric of each class from its counts.

        Parameters
        ----------
        tp : numpy.ndarray
            True positives per class.
        fp : numpy.ndarray
            False positives per class.
        fn : numpy.ndarray
            False negatives per class.

        Returns
        -------
        numpy.ndarray
            The metric per class.
        """
        return self._ratio(2 * tp, 2 * tp + fp + fn)


class AUC(Metric):
    """Area under the ROC curve of a binary classifier.

    The Mann-Whitney rank statistic of the positive-class scores (ties counted
    half), which equals scikit-learn's roc_auc_score. The scores (logits,
    monotone in the probability) of every batch are kept and ranked in `result`;
    NaN when only one class was seen.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.AUC().name
    'auc'
    """

    name = "auc"
    scores: List[Array]
    labels: List[Array]

    def check(self, loss: Loss, n_outputs: int) -> None:
        super().check(loss, n_outputs)
        single_label(self, loss, n_outputs)
        if n_classes(loss, n_outputs) != 2:
            raise ValueError(f"the auc metric is binary; this model has {n_outputs} classes")

    def reset(self) -> None:
        self.scores, self.labels = [], []

    def update(self, loss: Loss, output: Array, targets: Array) -> None:
        true, _ = class_indices(loss, output, targets)
        score = output[:, 0] if output.shape[1] == 1 else output[:, 1] - output[:, 0]
        self.scores.append(np.array(score, np.float64))
        self.labels.append(true.astype(bool))

    def result(self) -> float:
        scores, positive = np.concatenate(self.scores), np.concatenate(self.labels)
        n_pos = int(positive.sum())
        n_neg = positive.size - n_pos
        if n_pos == 0 or n_neg == 0:
            return math.nan
        ranks = rankdata(scores)
        return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------------ regression
class _Moments(Metric):
    """Base of the regression metrics: per output, the count, the sum of absolute
    and squared errors, and the mean and centred sum of squares of the targets
    (merged over batches with Chan's update, for R^2 without cancellation)."""

    classification = False

    def reset(self) -> None:
        self.n = 0
        self.abs_err = self.sq_err = self.mean = self.m2 = 0.0

    def update(self, loss: Loss, output: Array, targets: Array) -> None:
        pred = predictions(loss, output)
        err = pred - targets  # (N, K)
        n = output.shape[0]
        self.abs_err = self.abs_err + np.abs(err).sum(axis=0, dtype=np.float64)
        self.sq_err = self.sq_err + np.einsum("ij,ij->j", err, err, dtype=np.float64)
        mean = targets.mean(axis=0, dtype=np.float64)
        centred = targets - mean
        m2 = np.einsum("ij,ij->j", centred, centred, dtype=np.float64)
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.mean = self.mean + delta * n / total
        self.n = total


class MeanAbsoluteError(_Moments):
    """Mean absolute error over samples and outputs (scikit-learn's uniform average).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.get_metric("mae")
    MeanAbsoluteError()
    """

    name = "mae"

    def result(self) -> float:
        return float(np.mean(self.abs_err / self.n))


class MeanSquaredError(_Moments):
    """Mean squared error over samples and outputs (scikit-learn's uniform average).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.get_metric("mse")
    MeanSquaredError()
    """
    name = "mse"

    def result(self) -> float:
        return float(np.mean(self.sq_err / self.n))


class RootMeanSquaredError(_Moments):
    """The mean over outputs of each output's RMSE (scikit-learn's root_mean_squared_error).

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.get_metric("rmse")
    RootMeanSquaredError()
    """

    name = "rmse"

    def result(self) -> float:
        return float(np.mean(np.sqrt(self.sq_err / self.n)))


class R2(_Moments):
    """Coefficient of determination, averaged over outputs (scikit-learn's r2_score).

    1 for a constant target predicted exactly, else 0 for one.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.get_metric("r2")
    R2()
    """

    name = "r2"

    def result(self) -> float:
        ss_res, ss_tot = np.atleast_1d(self.sq_err), np.atleast_1d(self.m2)
        constant = np.where(ss_res == 0, 1.0, 0.0)
        scores = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), constant)
        return float(np.mean(scores))


METRICS = {
    "accuracy": Accuracy, "acc": Accuracy,
    "top_k_accuracy": TopKAccuracy, "sparse_top_k_categorical_accuracy": TopKAccuracy,
    "top_k_categorical_accuracy": TopKAccuracy,
    "precision": Precision, "recall": Recall, "f1": F1, "f1_score": F1, "auc": AUC,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "rmse": RootMeanSquaredError, "root_mean_squared_error": RootMeanSquaredError,
    "r2": R2, "r2_score": R2,
}


def get_metric(metric: Union[str, Config, Metric]) -> Metric:
    """Return a metric from a name, a saved config or a Metric.

    Parameters
    ----------
    metric : str, dict or Metric
        A name of METRICS ('accuracy', 'top_k_accuracy', 'precision', 'recall',
        'f1', 'auc', 'mae', 'mse', 'rmse', 'r2' and their long names), a dict as
        `Metric.config` gives, or a Metric (returned as it is).

    Returns
    -------
    Metric
        The metric.

    Raises
    ------
    ValueError
        If the name is unknown or the options invalid.
    TypeError
        If `metric` is of another type.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.metrics.get_metric({"name": "top_k_accuracy", "k": 3})
    TopKAccuracy(k=3)
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, dict):
        options = {k: v for k, v in metric.items() if k != "name"}
        cls = METRICS[chk.choice(metric.get("name"), "metric", METRICS)]
        try:
            return cls(**options)
        except TypeError as exc:
            raise ValueError(f"invalid options for the {metric.get('name')} metric: {exc}") from None
    if not isinstance(metric, str):
        raise TypeError("metrics entries must be metric names or Metric objects, got "
                        f"{type(metric).__name__}")
    return METRICS[chk.choice(metric, "metrics entry", METRICS)]()


__all__ = ["AUC", "F1", "METRICS", "R2", "Accuracy", "MeanAbsoluteError", "MeanSquaredError", "Metric",
           "Precision", "Recall", "RootMeanSquaredError", "TopKAccuracy", "get_metric"]
