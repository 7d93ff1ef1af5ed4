"""fastnn.tune: choosing hyperparameters for fastnn.nn models, with Keras
Tuner's shape::

    from fastnn import nn, tune

    def build_model(hp):
        return nn.Sequential([nn.Dense(hp.Int("units", 16, 128, step=16), "relu"), nn.Dense(10)],
                             loss="sparse_categorical_crossentropy",
                             optimizer=nn.Adam(hp.Float("lr", 1e-4, 1e-2, sampling="log")), seed=0)

    tuner = tune.RandomSearch(build_model, objective="val_accuracy", max_trials=5, seed=0,
                              directory="runs", project_name="digits")
    tuner.search(X, y, epochs=10, validation_split=0.2)
    best_model, = tuner.get_best_models(1)

Tuners: GridSearch, RandomSearch, BayesianOptimization (Optuna's TPE; needs
the 'tune' extra), Hyperband, PopulationBasedTraining; select_size for the
cross-validated choice of a network's size. In place of build_model, every
tuner takes a scikit-learn estimator and space={parameter: hp} (trained one
partial_fit epoch at a time). Trials run in this process, in
spawned worker processes (executor='processes', n_jobs) or on a Dask cluster
(executor=a dask.distributed.Client; the 'distributed' extra). Every finished
trial is written to directory/project_name, and a search started again there
resumes.
"""

from .hp import Boolean, Choice, Fixed, Float, HyperParameters, Int
from .pbt import PopulationBasedTraining
from .size import SizeSelection, select_size
from .trials import COMPLETED, FAILED, PRUNED, RUNNING, Objective, Trial
from .tuners import BayesianOptimization, GridSearch, Hyperband, RandomSearch, Tuner

__all__ = [
    "COMPLETED", "FAILED", "PRUNED", "RUNNING", "BayesianOptimization", "Boolean", "Choice", "Fixed",
    "Float", "GridSearch", "HyperParameters", "Hyperband", "Int", "Objective", "PopulationBasedTraining",
    "RandomSearch", "SizeSelection", "Trial", "Tuner", "select_size",
]
