"""Training one trial: what an executor runs, in the calling process or in a
worker. A `Task` says which configuration to train for how many epochs, and
from which model (a model to continue, or a model whose weights and optimizer
state a new configuration takes over, in population-based training); `run_task`
returns an `Outcome` with the new epochs' metrics and the trained model.
Nothing here touches the project directory: the search writes the records.

Models travel between processes as their description and arrays (a Sequential
pickles that way), never through files.
"""

import inspect
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..nn import Sequential
from . import estimator
from .hp import HyperParameters, random_draw

# hyperparameters with these names are passed to Sequential.fit (batch_size, ...)
FIT_OPTIONS = frozenset(inspect.signature(Sequential.fit).parameters) - {"self", "X", "y", "epochs"}


@dataclass
class Data:
    """The search's data: X, y and how to validate (validation_data,
    validation_split or folds = [(train_rows, val_rows), ...] for cv)."""

    X: Any
    y: Any
    validation_data: Any = None
    validation_split: float = 0.0
    folds: Any = None


@dataclass
class Task:
    """number: the trial; given: its hyperparameter values decided in advance
    (None: drawn in the worker from draw_seed); epochs: to train now, after
    `epochs_done`; start: a model to continue (None: build_model(hp)); transplant:
    build the configuration and give it start's weights, running statistics and
    optimizer state (start's learning-rate settings are not copied)."""

    number: int
    build_model: Any
    given: Optional[dict]
    draw_seed: Any
    epochs: int
    epochs_done: int = 0
    start: Any = None
    transplant: bool = False
    fit_kwargs: dict = field(default_factory=dict)


@dataclass
class Outcome:
    number: int
    values: dict
    space: dict
    metrics: dict  # {key: [value per new epoch]}
    model: Any = None
    error: Optional[str] = None


def build(build_model, hp):
    model = build_model(hp)
    if not isinstance(model, Sequential) and not isinstance(build_model, estimator.EstimatorSpace):
        raise TypeError(f"build_model must return a fastnn.nn.Sequential, got {type(model).__name__}")
    return model


def save_model(model, f):
    """Write a trial's model (a Sequential or an estimator) to the file object f."""
    if isinstance(model, Sequential):
        model.save(f)
    else:
        estimator.save_estimator(model, f)


def model_suffix(model):
    return ".npz" if isinstance(model, Sequential) else estimator.SUFFIX


def load_model(path):
    """The model save_model wrote to path."""
    from ..nn import load

    return estimator.load_estimator(path) if str(path).endswith(estimator.SUFFIX) else load(path)


def transplant(source, model):
    """Give `model` (a configuration of the same architecture) the weights,
    running statistics and optimizer state of `source`: one copy of each flat
    buffer. The optimizer keeps its own learning rate: the counters of its
    schedule come from source, the rates from the new configuration. Returns
    the model (an estimator: a copy of source under model's parameters)."""
    if not isinstance(model, Sequential):
        return estimator.transplant_estimator(source, model)
    model.build(source.input_shape)
    if model.n_params != source.n_params or model.get_flat_state().size != source.get_flat_state().size:
        raise ValueError("the mutated configuration has another architecture than the member it copies; "
                         "only hyperparameters that keep the layer sizes can be mutated")
    model.set_flat_params(source.get_flat_params())
    model.get_flat_state()[...] = source.get_flat_state()
    model._passes = source._passes  # dropout masks continue the source's sequence
    opt = source.optimizer
    if opt.is_bound_to(source.get_flat_params()) and type(opt) is type(model.optimizer):
        counters, buffers = opt.get_state()
        counters = dict(counters, schedule={k: v for k, v in counters["schedule"].items()
                                            if k not in ("lr0", "lr")})
        model.optimizer.set_state(model.get_flat_params(), counters, buffers)
    return model


def _fit(model, X, y, task, fit_kwargs, validation):
    """Train `task.epochs` epochs after `task.epochs_done`, one fit call per epoch,
    with the shuffling seed (model seed, epoch index): a configuration trained in
    rounds (Hyperband's rungs, PBT's intervals, a resumed search) sees the same
    batches as one trained straight through. Returns {key: [value per epoch]}.
    An estimator trains through partial_fit (estimator.fit_epochs)."""
    if not isinstance(model, Sequential):
        validation_data = validation.get("validation_data")
        if validation.get("validation_split"):
            X, y, validation_data = estimator.split_validation(X, y, validation["validation_split"])
        return estimator.fit_epochs(model, X, y, task.epochs, task.epochs_done, task.draw_seed,
                                    validation_data, fit_kwargs)
    history = {}  # type: ignore[var-annotated]
    kwargs = {"verbose": 0, **fit_kwargs, **validation}
    for epoch in range(task.epochs_done, task.epochs_done + task.epochs):
        logs = model.fit(X, y, epochs=1, seed=(model.seed, epoch), **kwargs)
        for key, values in logs.items():
            history.setdefault(key, []).extend(values)
    return history


def run_task(task, data):
    """Train the task's configuration; every error becomes Outcome.error (with
    the traceback), so that a failing trial never stops the search."""
    draw = None if task.given is not None else random_draw(task.draw_seed)
    hp = HyperParameters(given=task.given, draw=draw)
    try:
        if task.start is not None and not task.transplant:
            model = task.start
            # the values of the configuration being continued
            hp = HyperParameters(given=task.given)
            hp.values = dict(task.given)
        else:
            model = build(task.build_model, hp)
            if task.transplant:
                model = transplant(task.start, model)
        fit_kwargs = dict(task.fit_kwargs)
        if isinstance(model, Sequential):  # an estimator takes every value as a parameter
            fit_kwargs.update({k: v for k, v in hp.values.items() if k in FIT_OPTIONS})
        if data.folds is None:
            validation = {}
            if data.validation_data is not None:
                validation["validation_data"] = data.validation_data
            elif data.validation_split:
                validation["validation_split"] = data.validation_split
            metrics = dict(_fit(model, data.X, data.y, task, fit_kwargs, validation))
        else:
            metrics = cross_validate(task, data, hp, model, fit_kwargs)
        metrics = {k: [float(v) for v in vs] for k, vs in metrics.items()}
        return Outcome(task.number, dict(hp.values), dict(hp.space), metrics, model)
    except Exception as exc:  # noqa: BLE001 - recorded in the trial, the search goes on
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        return Outcome(task.number, dict(hp.values), dict(hp.space), {}, None, error)


def cross_validate(task, data, hp, first_model, fit_kwargs):
    """K-fold: one model per fold (the first is `first_model`), the per-epoch
    metrics averaged over the folds; the first fold's model is kept."""
    per_fold = []
    for k, (train, val) in enumerate(data.folds):
        model = first_model if k == 0 else build(task.build_model, hp)
        X, y = data.X[train], data.y[train]
        per_fold.append(dict(_fit(model, X, y, task, fit_kwargs,
                                  {"validation_data": (data.X[val], data.y[val])})))
    keys = per_fold[0].keys()
    return {key: list(np.mean([fold[key] for fold in per_fold], axis=0)) for key in keys}
