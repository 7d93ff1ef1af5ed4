"""scikit-learn estimators as trials: a tuner given an estimator and a space
({parameter name: hp.Float(...), ...}) in place of build_model trains clones of
the estimator with the drawn parameters, one epoch per `partial_fit` call, so
that Hyperband continues its survivors and population-based training copies a
member's fitted network and solver state (for fastnn's estimators, model_'s
flat buffers and the optimizer bound to them) into another configuration.

The functions here are what fitting.py and the project records do with a
trial's model when it is an estimator instead of a fastnn.nn.Sequential:
train epochs, score them on the validation data, take over a donor's state,
save and load.
"""

import copy
import pickle

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import accuracy_score, log_loss, mean_poisson_deviance, mean_squared_error

from .hp import Spec


def is_estimator(obj):
    """Whether obj is a scikit-learn estimator a tuner can train epoch by epoch."""
    return hasattr(obj, "get_params") and hasattr(obj, "set_params")


class EstimatorSpace:
    """build_model for an estimator: hp -> a clone of `estimator` with the values
    of `space` ({parameter name: Spec}, asked in the dict's order) set."""

    def __init__(self, estimator, space):
        if not is_estimator(estimator) or not hasattr(estimator, "partial_fit"):
            raise TypeError(f"a tuner trains an estimator through partial_fit; {type(estimator).__name__} "
                            "has none (for fastnn's estimators, choose a stochastic solver)")
        if not isinstance(space, dict) or not space:
            raise TypeError("with an estimator, pass space={parameter name: tune.Float(...), ...}")
        params = estimator.get_params()
        for name, spec in space.items():
            if name not in params:
                raise ValueError(f"space names {name!r}, which is not a parameter of "
                                 f"{type(estimator).__name__}")
            if not isinstance(spec, Spec) or spec.name != name:
                raise TypeError(f"space[{name!r}] must be a hyperparameter named {name!r} "
                                f"(tune.Float({name!r}, ...)), got {spec!r}")
        self.estimator, self.space = estimator, dict(space)

    def __call__(self, hp):
        values = {name: hp._ask(spec) for name, spec in self.space.items()}
        return clone(self.estimator).set_params(**values)


def fit_epochs(est, X, y, epochs, first_epoch, seed, validation_data, fit_kwargs):
    """Train `epochs` epochs after `first_epoch`, one partial_fit call each over
    the rows shuffled by (seed..., epoch index) (so a configuration trained in
    rounds sees the same epochs as one trained straight through); returns
    {key: [value per epoch]}: 'loss' (the estimator's training loss_, if it has
    one) and on validation data 'val_loss' (log loss, for classifiers with
    predict_proba; the estimator's half squared error or half Poisson deviance
    for regressors), 'val_score' (est.score's value) and for classifiers
    'val_accuracy'."""
    if fit_kwargs:
        raise ValueError(f"an estimator's search takes no fit options ({sorted(fit_kwargs)}); set them as "
                         "the estimator's parameters")
    kwargs = {"classes": np.unique(y)} if is_classifier(est) else {}
    history = {}  # type: ignore[var-annotated]
    for epoch in range(first_epoch, first_epoch + epochs):
        order = np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(X.shape[0])
        est.partial_fit(X[order], y[order], **kwargs)
        logs = {"loss": est.loss_} if hasattr(est, "loss_") else {}
        if validation_data is not None:
            logs.update(validation_metrics(est, *validation_data))
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
    return history


def validation_metrics(est, X_val, y_val):
    if is_classifier(est):
        # a classifier's score is its accuracy (ClassifierMixin.score)
        accuracy = accuracy_score(y_val, est.predict(X_val))
        logs = {"val_accuracy": accuracy, "val_score": accuracy}
        if hasattr(est, "predict_proba"):  # (a margin classifier has no log loss)
            logs["val_loss"] = log_loss(y_val, est.predict_proba(X_val), labels=est.classes_)
        return logs
    pred = est.predict(X_val)
    if getattr(est, "loss", None) == "poisson":
        loss = mean_poisson_deviance(y_val, pred) / 2
    else:
        loss = mean_squared_error(y_val, pred) / 2
    return {"val_loss": loss, "val_score": est.score(X_val, y_val)}


def split_validation(X, y, validation_split):
    """(X_train, y_train, (X_val, y_val)): the last validation_split of the rows
    held out, as Sequential.fit does."""
    n_val = int(round(X.shape[0] * validation_split))
    if not 0 < n_val < X.shape[0]:
        raise ValueError(f"validation_split={validation_split} leaves no validation or no training rows")
    cut = X.shape[0] - n_val
    return X[:cut], y[:cut], (X[cut:], y[cut:])


def transplant_estimator(source, est):
    """The fitted state of `source` (its network and solver state: for fastnn's
    estimators model_ and the optimizer bound to it) under the parameters of
    `est` (a new, unfitted configuration), the solver taking over the new rates
    for the steps to come."""
    from ..estimators import update_solver

    new = copy.deepcopy(source)
    new.set_params(**est.get_params(deep=False))
    return update_solver(new) if hasattr(new, "model_") else new


# saving: a trial's model file is the pickled estimator (scikit-learn's own way
# to keep a fitted estimator); load such a project only from a trusted place
SUFFIX = ".pkl"


def save_estimator(est, f):
    pickle.dump(est, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_estimator(path):
    with open(path, "rb") as f:
        try:
            return pickle.load(f)  # noqa: S301 - the project's own record
        except Exception as exc:  # noqa: BLE001 - any failure is a corrupt file
            raise ValueError(f"{path} is not a readable saved estimator: {exc}") from None
