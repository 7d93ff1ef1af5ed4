"""Tuners: the search loop, its records and results, and the strategies that
choose configurations (grid, random, Bayesian with Optuna's TPE, Hyperband).

A tuner opens its project directory when it is created: a search that stopped
(interrupted, killed) resumes with the same directory and overwrite=False. Each
trial is written as it finishes; finished trials are not rerun, a trial that
was running is rerun with the same hyperparameters, and max_trials counts every
trial of the project.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp

from .._types import ArrayLike
from .estimator import EstimatorSpace, is_estimator
from .executors import get_executor
from .fitting import Data, Task, build, load_model
from .hp import Fixed, HyperParameters
from .report import plot_trials, summary_table
from .trials import COMPLETED, FAILED, PRUNED, RUNNING, Project, Trial, get_objective, score_of

if TYPE_CHECKING:  # for annotations only
    from .hp import Spec
    from .trials import Objective

OPTUNA_MISSING = "BayesianOptimization needs Optuna: pip install 'fastnn-cpu[tune]' (or pip install optuna)"


def _check_count(value, name, low=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class Tuner:
    """The base of the tuners: trials, their records, the search loop.

    With an estimator in place of build_model, each trial trains a clone with the
    drawn parameters, one partial_fit call per epoch; its history has 'loss' and,
    on the validation data, 'val_loss', 'val_score' (est.score) and for
    classifiers 'val_accuracy'. Trained estimators are saved pickled.

    Parameters
    ----------
    build_model : callable or estimator
        ``build_model(hp) -> Sequential`` (a compiled model; its seed fixes its
        initial weights), or a scikit-learn estimator with partial_fit (such as
        fastnn.MLPClassifier with a stochastic solver) together with `space`.
    objective : str or Objective, default 'val_accuracy'
        A history key ('val_accuracy', 'val_loss', ...) or
        ``tune.Objective(name, direction)``.
    max_trials : int, optional, default 10
        Trials in the project, all statuses counted.
    seed : int, optional
        The tuner's draws (None: one drawn and stored with the project).
    directory : str or path-like, default '.'
        Where the project's directory goes.
    project_name : str, default 'tune'
        The project's directory.
    overwrite : bool, default False
        Delete the project's earlier records.
    executor : None, 'processes' or dask.distributed.Client, default None
        Where trials run: this process, spawned processes (with n_jobs) or a Dask
        cluster.
    n_jobs : int, optional
        The worker processes of executor='processes'.
    space : dict, optional
        ``{parameter name: tune.Float(name, ...), ...}`` of an estimator.

    Raises
    ------
    TypeError
        If build_model is neither a function nor an estimator.
    ValueError
        If an option is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn, tune
    >>> def build_model(hp):
    ...     return nn.Sequential([nn.Dense(hp.Int("units", 4, 8, step=4), "relu"), nn.Dense(2)],
    ...                          loss="sparse_categorical_crossentropy", seed=0)
    >>> X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(np.int64)
    >>> tuner = tune.GridSearch(build_model, directory="runs", project_name="example")
    >>> _ = tuner.search(X, y, epochs=1, validation_split=0.25)
    >>> [trial.hp.get("units") for trial in tuner.trials]
    [4, 8]
    """

    kind: Optional[str] = None

    def __init__(self, build_model: Any, objective: Union[str, Objective] = "val_accuracy",
                 max_trials: Optional[int] = 10, seed: Optional[int] = None,
                 directory: Union[str, os.PathLike[str]] = ".", project_name: str = "tune",
                 overwrite: bool = False, executor: Any = None, n_jobs: Optional[int] = None,
                 space: Optional[Dict[str, Spec]] = None) -> None:
        if space is not None or is_estimator(build_model):
            build_model = EstimatorSpace(build_model, space)
        elif not callable(build_model):
            raise TypeError(f"build_model must be a function hp -> Sequential, got {build_model!r}")
        self.build_model = build_model
        self.objective = get_objective(objective)
        self.max_trials = _check_count(max_trials, "max_trials", allow_none=True)
        if seed is not None:
            seed = _check_count(seed, "seed", low=0)
        get_executor(executor, n_jobs)  # invalid executors fail here, not at search
        self.executor, self.n_jobs = executor, n_jobs
        drawn = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed
        self.project = Project(directory, project_name, self._settings(drawn), overwrite)
        stored = self.project.settings["seed"]
        if seed is not None and stored != seed:
            raise ValueError(f"{self.project.path} holds a search with seed={stored}, not {seed}; pass "
                             "overwrite=True to start again")
        self.seed = stored
        self._trials = self.project.load_trials()

    def _settings(self, seed):
        return {"tuner": self.kind, "objective": self.objective.config(), "seed": seed}

    # ----------------------------------------------------------------- search
    def search(self, X: ArrayLike, y: Optional[ArrayLike], epochs: int = 1,
               validation_data: Optional[Tuple[ArrayLike, ...]] = None, validation_split: float = 0.0,
               cv: Optional[int] = None, **fit_kwargs: Any) -> Tuner:
        """Run trials until max_trials (or the strategy's end).

        Each epoch is one fit call shuffled by (model seed, epoch index), so that a
        configuration trained in rounds trains as if straight through; fit's
        callbacks are therefore not taken. The data goes to each worker once.

        Parameters
        ----------
        X : array_like
            The training inputs.
        y : array_like
            The training targets.
        epochs : int, default 1
            Epochs per trial.
        validation_data : tuple, optional
            ``(X_val, y_val)`` to score on.
        validation_split : float, default 0.0
            Or the fraction of the training data held out.
        cv : int, optional
            Or K-fold cross-validation: the score and metrics are the folds' mean,
            the kept model the first fold's.
        **fit_kwargs : object
            Further arguments of `Sequential.fit` (a hyperparameter named like one of
            them, e.g. batch_size, overrides it).

        Returns
        -------
        Tuner
            The tuner.
        """
        data = self._data(X, y, validation_data, validation_split, cv)
        epochs = _check_count(epochs, "epochs")
        for key in ("callbacks", "seed", "epochs"):
            if fit_kwargs.get(key) is not None:
                raise ValueError(f"search calls fit once per epoch with its own seed: {key} cannot be passed")
        executor = get_executor(self.executor, self.n_jobs)
        executor.start(data)
        try:
            self._search(executor, epochs, fit_kwargs)
        finally:
            executor.close()
        return self

    def _data(self, X, y, validation_data, validation_split, cv):
        X = X if sp.issparse(X) else np.asarray(X)
        y = np.asarray(y)
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples and y {y.shape[0]}")
        folds = None
        if cv is not None:
            if validation_data is not None or validation_split:
                raise ValueError("pass cv or validation_data/validation_split, not both")
            from sklearn.model_selection import KFold

            cv = _check_count(cv, "cv", low=2)
            folds = list(KFold(cv, shuffle=True, random_state=self.seed % 2**32).split(X))
        return Data(X, y, validation_data, validation_split, folds)

    def _search(self, executor, epochs, fit_kwargs):
        # interrupted trials first, with their own hyperparameters
        rerun = [t for t in self.trials if t.status == RUNNING]

        def tasks():
            while True:
                trial = rerun.pop(0) if rerun else self._new_trial()
                if trial is None:
                    return
                given = self._given(trial)
                if given is not None:
                    trial.hyperparameters = given
                self.project.write(trial)
                yield Task(trial.number, self.build_model, given, (self.seed, trial.number), epochs,
                           fit_kwargs=fit_kwargs)

        self._run(executor, tasks(), COMPLETED)

    def _run(self, executor, tasks, done_status):
        """Keep the executor's slots busy with the tasks of the iterator `tasks`
        (taken only when a slot is free, so that a strategy choosing the next
        configuration knows every result so far) and record each outcome as it
        arrives."""
        pending, exhausted = [], False  # type: ignore[var-annotated]
        while True:
            while not exhausted and len(pending) < executor.slots:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                else:
                    pending.append(executor.submit(task))
            if not pending:
                return
            for handle in executor.wait(pending):
                pending.remove(handle)
                self._record(executor.outcome(handle), done_status)

    def _new_trial(self):
        number = len(self._trials)
        if self.max_trials is not None and number >= self.max_trials:
            return None
        trial = self._trials[number] = Trial(number)
        return trial

    def _given(self, trial):
        """The trial's hyperparameters decided before it runs (None: drawn in the
        worker from the seed (tuner seed, trial number))."""
        return trial.hyperparameters or None

    def _record(self, outcome, done_status):
        """Write the trial of `outcome`: its new epochs' metrics, score and model,
        or FAILED with the error."""
        trial = self._trials[outcome.number]
        if outcome.space:  # built in the worker (a continued model asks nothing)
            trial.hyperparameters, trial.space = outcome.values, outcome.space
        model = None
        if outcome.error is None:
            trial.metrics = {k: trial.metrics.get(k, []) + v for k, v in outcome.metrics.items()}
            new_epochs = len(next(iter(outcome.metrics.values()), []))
            try:
                trial.score = score_of(trial.metrics, self.objective)
                trial.epochs += new_epochs
                trial.status, model = done_status, outcome.model
            except ValueError as exc:
                outcome.error = f"ValueError: {exc}"
        if outcome.error is not None:
            trial.status, trial.error = FAILED, outcome.error
        old = self.project.write(trial, model)
        if old is not None:
            self.project.remove_model(old)
        self._told(trial)
        return trial

    def _told(self, trial):
        """A trial finished (a strategy that learns from results hears it here)."""

    # ---------------------------------------------------------------- results
    @property
    def trials(self) -> List[Trial]:
        """Every trial of the project, in order."""
        return [self._trials[k] for k in sorted(self._trials)]

    def get_best_trials(self, num_trials: int = 1) -> List[Trial]:
        """Return the best completed trials, best first.

        Parameters
        ----------
        num_trials : int, default 1
            How many.

        Returns
        -------
        list of Trial
            The trials.
        """
        done = [t for t in self.trials if t.status == COMPLETED]
        done.sort(key=lambda t: (self.objective.sort_key(t.score), t.number))
        return done[:num_trials]

    def get_best_hyperparameters(self, num_trials: int = 1) -> List[HyperParameters]:
        """Return the hyperparameters of the best completed trials, best first.

        Parameters
        ----------
        num_trials : int, default 1
            How many.

        Returns
        -------
        list of HyperParameters
            ``build_model(hp)`` builds each configuration.
        """
        return [t.hp for t in self.get_best_trials(num_trials)]

    def get_best_models(self, num_trials: int = 1) -> List[Any]:
        """Return the trained models of the best completed trials, loaded from the project.

        Parameters
        ----------
        num_trials : int, default 1
            How many.

        Returns
        -------
        list
            The models (Sequential, or the estimators).
        """
        return [load_model(self.project.model_path(t)) for t in self.get_best_trials(num_trials)]

    def results_summary(self, num_trials: int = 10) -> str:
        """Return a table of the best trials (then the failed ones).

        Parameters
        ----------
        num_trials : int, default 10
            How many of the best.

        Returns
        -------
        str
            The table.
        """
        best = self.get_best_trials(num_trials)
        others = [t for t in self.trials if t.status != COMPLETED]
        return summary_table(self, best + others)

    def plot(self, path: Union[str, os.PathLike[str]]) -> None:
        """Save a figure of the score against the trial number to `path`.

        For population-based training, also the hyperparameter schedules. Needs
        matplotlib (pip install 'fastnn-cpu[bench]').

        Parameters
        ----------
        path : str or path-like
            The image file.
        """
        plot_trials(self, path)


class RandomSearch(Tuner):
    """Random search: each trial's values drawn independently from the seed.

    The draws follow from (tuner seed, trial number): the same trials in any
    executor.

    Parameters
    ----------
    build_model : callable or estimator
        ``build_model(hp) -> Sequential`` (a compiled model; its seed fixes its
        initial weights), or a scikit-learn estimator with partial_fit (such as
        fastnn.MLPClassifier with a stochastic solver) together with `space`.
    objective : str or Objective, default 'val_accuracy'
        A history key ('val_accuracy', 'val_loss', ...) or
        ``tune.Objective(name, direction)``.
    max_trials : int, optional, default 10
        Trials in the project, all statuses counted.
    seed : int, optional
        The tuner's draws (None: one drawn and stored with the project).
    directory : str or path-like, default '.'
        Where the project's directory goes.
    project_name : str, default 'tune'
        The project's directory.
    overwrite : bool, default False
        Delete the project's earlier records.
    executor : None, 'processes' or dask.distributed.Client, default None
        Where trials run: this process, spawned processes (with n_jobs) or a Dask
        cluster.
    n_jobs : int, optional
        The worker processes of executor='processes'.
    space : dict, optional
        ``{parameter name: tune.Float(name, ...), ...}`` of an estimator.

    Examples
    --------
    >>> from fastnn import nn, tune
    >>> def build_model(hp):
    ...     return nn.Sequential([nn.Dense(hp.Int("units", 4, 64), "relu"), nn.Dense(2)], loss="mse")
    >>> tuner = tune.RandomSearch(build_model, objective="val_loss", max_trials=3, seed=0, directory="runs",
    ...                           project_name="random")
    """

    kind = "random"


class GridSearch(Tuner):
    """Grid search: every combination of the values of the grid, in order.

    Int: its steps, Float: needs a step, Choice/Boolean: all values; the last
    hyperparameter asked varies fastest; conditional hyperparameters only where
    their branch is taken. The grid is found by calling build_model on the
    hyperparameters alone (no training) before the first trial.

    Parameters
    ----------
    build_model : callable or estimator
        ``build_model(hp) -> Sequential`` (a compiled model; its seed fixes its
        initial weights), or a scikit-learn estimator with partial_fit (such as
        fastnn.MLPClassifier with a stochastic solver) together with `space`.
    objective : str or Objective, default 'val_accuracy'
        A history key ('val_accuracy', 'val_loss', ...) or
        ``tune.Objective(name, direction)``.
    max_trials : int, optional
        None: the whole grid.
    **options : object
        The other parameters of `Tuner` (seed, directory, project_name,
        overwrite, executor, n_jobs, space).

    Examples
    --------
    >>> from fastnn import nn, tune
    >>> def build_model(hp):
    ...     return nn.Sequential([nn.Dense(hp.Choice("units", [8, 16]), "relu"), nn.Dense(2)], loss="mse")
    >>> tuner = tune.GridSearch(build_model, objective="val_loss", directory="runs", project_name="grid")
    """

    kind = "grid"

    def __init__(self, build_model: Any, objective: Union[str, Objective] = "val_accuracy",
                 max_trials: Optional[int] = None, **options: Any) -> None:
        super().__init__(build_model, objective, max_trials, **options)
        self._points = None

    def _new_trial(self):
        if self._points is None:
            self._points = grid_points(self.build_model)
        if len(self._trials) >= len(self._points):  # type: ignore[arg-type]
            return None
        return super()._new_trial()

    def _given(self, trial):
        if self._points is None:
            self._points = grid_points(self.build_model)
        return self._points[trial.number]  # type: ignore[index]


def ask(build_model, hp):
    """Run build_model to learn which values it asks for (define-by-run), not to
    train: an error is ignored here, the trial raises it again when it runs and
    is recorded FAILED."""
    try:
        build(build_model, hp)
    except Exception:  # noqa: BLE001, S110 - reported by the trial
        pass
    return hp


def grid_points(build_model, limit=100_000):
    """Every point of build_model's grid: an odometer over the hyperparameters a
    run asks for, the last one turning fastest; a run that takes another branch
    asks for other names, which start at their first value."""
    points, position = [], {}  # type: ignore[var-annotated]
    while True:
        hp = ask(build_model, HyperParameters(draw=lambda spec, position=position:  # type: ignore[misc]
                                              spec.grid()[position.get(spec.name, 0)]))
        points.append(dict(hp.values))
        if len(points) > limit:
            raise ValueError(f"the grid has more than {limit} points")
        names = list(hp.space)
        position = {name: position.get(name, 0) for name in names}
        for name in reversed(names):
            if position[name] + 1 < len(hp.space[name].grid()):
                position[name] += 1
                break
            position[name] = 0
        else:
            return points


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(OPTUNA_MISSING) from None
    return optuna


def _suggest(optuna_trial, spec):
    """spec's value from an Optuna trial (define-by-run, as build_model asks)."""
    optuna = _optuna()
    if isinstance(spec, Fixed):
        return spec.value
    dist = spec.optuna_distribution()
    if isinstance(dist, optuna.distributions.IntDistribution):
        return optuna_trial.suggest_int(spec.name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return optuna_trial.suggest_float(spec.name, dist.low, dist.high, step=dist.step, log=dist.log)
    return optuna_trial.suggest_categorical(spec.name, dist.choices)


class BayesianOptimization(Tuner):
    """Bayesian optimisation with Optuna's TPE sampler, through its ask/tell interface.

    Each trial's values are asked of the study (build_model runs on the
    hyperparameters alone to ask them, define-by-run) and its score told when it
    finishes. The first num_initial_points trials are random. Needs optuna (the
    'tune' extra). A resumed search tells the study its finished trials again.

    Parameters
    ----------
    build_model : callable or estimator
        ``build_model(hp) -> Sequential`` (a compiled model; its seed fixes its
        initial weights), or a scikit-learn estimator with partial_fit (such as
        fastnn.MLPClassifier with a stochastic solver) together with `space`.
    objective : str or Objective, default 'val_accuracy'
        A history key ('val_accuracy', 'val_loss', ...) or
        ``tune.Objective(name, direction)``.
    max_trials : int, optional, default 10
        Trials in the project.
    num_initial_points : int, default 5
        Random trials before the sampler's.
    **options : object
        The other parameters of `Tuner` (seed, directory, project_name,
        overwrite, executor, n_jobs, space).

    Raises
    ------
    ImportError
        If optuna is not installed.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.BayesianOptimization.kind
    'bayesian'
    """

    kind = "bayesian"

    def __init__(self, build_model: Any, objective: Union[str, Objective] = "val_accuracy",
                 max_trials: Optional[int] = 10, num_initial_points: int = 5, **options: Any) -> None:
        self._optuna = _optuna()
        self.num_initial_points = _check_count(num_initial_points, "num_initial_points", low=0)
        super().__init__(build_model, objective, max_trials, **options)
        self._study = None
        self._asked = {}  # type: ignore[var-annotated]  # trial number -> its Optuna trial

    def _get_study(self):
        if self._study is None:
            optuna = self._optuna
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=self.seed % 2**32,
                                                 n_startup_trials=self.num_initial_points)
            direction = "maximize" if self.objective.direction == "max" else "minimize"
            self._study = optuna.create_study(direction=direction, sampler=sampler)
            for trial in self.trials:
                if trial.status == COMPLETED:
                    self._add_to_study(trial)
        return self._study

    def _add_to_study(self, trial):
        optuna = self._optuna
        params = {k: v for k, v in trial.hyperparameters.items() if not isinstance(trial.space[k], Fixed)}
        dists = {k: trial.space[k].optuna_distribution() for k in params}
        done = optuna.trial.create_trial(params=params, distributions=dists, value=trial.score)
        self._study.add_trial(done)  # type: ignore[attr-defined]

    def _given(self, trial):
        if trial.hyperparameters:  # a rerun
            return trial.hyperparameters
        asked = self._get_study().ask()
        hp = ask(self.build_model, HyperParameters(draw=lambda spec: _suggest(asked, spec)))
        self._asked[trial.number] = asked
        trial.space = dict(hp.space)
        return dict(hp.values)

    def _told(self, trial):
        study = self._get_study()
        asked = self._asked.pop(trial.number, None)
        if asked is None:
            if trial.status == COMPLETED:
                self._add_to_study(trial)
        elif trial.status == COMPLETED:
            study.tell(asked, trial.score)
        else:
            study.tell(asked, state=self._optuna.trial.TrialState.FAIL)


class Hyperband(Tuner):
    """Hyperband (Li et al. 2018): brackets of successive halving over epochs.

    A bracket trains n random configurations for r epochs, keeps the best
    1/factor of them and trains those on (resuming their weights and optimizer
    state, not from scratch) to r*factor epochs, and so on up to max_epochs.
    Stopped configurations are PRUNED (with their score at their last rung);
    those that reach the bracket's end COMPLETED. Configurations are drawn as in
    RandomSearch.

    Parameters
    ----------
    build_model : callable or estimator
        ``build_model(hp) -> Sequential`` (a compiled model; its seed fixes its
        initial weights), or a scikit-learn estimator with partial_fit (such as
        fastnn.MLPClassifier with a stochastic solver) together with `space`.
    objective : str or Objective, default 'val_accuracy'
        A history key ('val_accuracy', 'val_loss', ...) or
        ``tune.Objective(name, direction)``.
    max_epochs : int, default 9
        The epochs of a configuration that reaches a bracket's end.
    factor : int, default 3
        The reduction factor (at least 2).
    hyperband_iterations : int, default 1
        How many times the brackets run.
    max_trials : int, optional
        Caps the number of trials, which follows from max_epochs, factor and
        hyperband_iterations.
    **options : object
        The other parameters of `Tuner` (seed, directory, project_name,
        overwrite, executor, n_jobs, space).

    Examples
    --------
    >>> from fastnn import nn, tune
    >>> def build_model(hp):
    ...     return nn.Sequential([nn.Dense(hp.Int("units", 4, 64), "relu"), nn.Dense(2)], loss="mse")
    >>> hyperband = tune.Hyperband(build_model, directory="runs", project_name="hb")
    >>> [len(numbers) for numbers, rungs in hyperband.brackets()]
    [9, 5, 3]
    """

    kind = "hyperband"

    def __init__(self, build_model: Any, objective: Union[str, Objective] = "val_accuracy",
                 max_epochs: int = 9, factor: float = 3, hyperband_iterations: int = 1,
                 max_trials: Optional[int] = None, **options: Any) -> None:
        self.max_epochs = _check_count(max_epochs, "max_epochs")
        self.factor = _check_count(factor, "factor", low=2)
        self.hyperband_iterations = _check_count(hyperband_iterations, "hyperband_iterations")
        super().__init__(build_model, objective, max_trials, **options)

    def _settings(self, seed):
        return {**super()._settings(seed), "max_epochs": self.max_epochs, "factor": self.factor}

    def brackets(self) -> List[Tuple[List[int], List[Tuple[int, int]]]]:
        """List the brackets in order.

        Returns
        -------
        list of (list of int, list of (int, int))
            ``[(trial numbers, [(configurations, epochs) per rung])]``.
        """
        R, eta = self.max_epochs, self.factor
        s_max = int(math.floor(math.log(R) / math.log(eta) + 1e-9))
        out, number = [], 0
        for _ in range(self.hyperband_iterations):
            for s in range(s_max, -1, -1):
                n = int(math.ceil((s_max + 1) / (s + 1) * eta**s))
                rungs = [(max(1, n // eta**i), max(1, int(round(R * eta ** (i - s))))) for i in range(s + 1)]
                out.append((list(range(number, number + n)), rungs))
                number += n
        if self.max_trials is not None:
            out = [([k for k in numbers if k < self.max_trials], rungs) for numbers, rungs in out]
            out = [b for b in out if b[0]]
        return out

    def search(self, X: ArrayLike, y: Optional[ArrayLike], epochs: Optional[int] = None,
               validation_data: Optional[Tuple[ArrayLike, ...]] = None, validation_split: float = 0.0,
               cv: Optional[int] = None, **fit_kwargs: Any) -> Tuner:
        """Run the brackets (as `Tuner.search`).

        Parameters
        ----------
        X : array_like
            The training inputs.
        y : array_like
            The training targets.
        epochs : int, optional
            Ignored: the brackets set them (max_epochs at most).
        validation_data : tuple, optional
            ``(X_val, y_val)`` to score on.
        validation_split : float, default 0.0
            Or the fraction of the training data held out.
        cv : None
            Not supported (Hyperband continues each configuration's model).
        **fit_kwargs : object
            Further arguments of `Sequential.fit`.

        Returns
        -------
        Tuner
            The tuner.

        Raises
        ------
        ValueError
            If `cv` is given.
        """
        if cv is not None:
            raise ValueError("Hyperband continues each configuration's model: cv is not supported")
        return super().search(X, y, self.max_epochs, validation_data, validation_split, None, **fit_kwargs)

    def _search(self, executor, epochs, fit_kwargs):
        for numbers, rungs in self.brackets():
            alive = list(numbers)
            for i, (_, budget) in enumerate(rungs):
                last = i == len(rungs) - 1
                tasks = []
                for number in alive:
                    trial = self._trials.get(number)
                    if trial is None:
                        trial = self._trials[number] = Trial(number)
                        self.project.write(trial)
                    if trial.status == FAILED or trial.epochs >= budget:
                        continue
                    start = load_model(self.project.model_path(trial)) if trial.epochs else None
                    given = trial.hyperparameters if trial.epochs else None
                    tasks.append(Task(number, self.build_model, given, (self.seed, number),
                                      budget - trial.epochs, trial.epochs, start, fit_kwargs=fit_kwargs))
                self._run(executor, iter(tasks), COMPLETED if last else RUNNING)
                ranked = [self._trials[k] for k in alive if self._trials[k].status != FAILED]
                objective = self.objective
                ranked.sort(key=lambda t: (objective.sort_key(score_of(t.metrics, objective, budget)),
                                           t.number))
                keep = rungs[i + 1][0] if not last else len(ranked)
                if last:  # trained to the end before an interruption, not yet marked
                    for trial in ranked:
                        if trial.status == RUNNING:
                            trial.status = COMPLETED
                            self.project.write(trial)
                for trial in ranked[keep:]:
                    if trial.status != PRUNED:
                        trial.status = PRUNED
                        self.project.write(trial)
                alive = [t.number for t in ranked[:keep]]
