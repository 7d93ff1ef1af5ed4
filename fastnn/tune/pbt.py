"""Population-based training (Jaderberg et al. 2017).

A population of configurations trains in rounds of `perturbation_interval`
epochs. After each round the members are ranked by the objective; each member
of the bottom quantile takes over the model of a member of the top quantile
(its flat parameter buffer, running statistics and optimizer state: one copy
of each buffer) and explores: each mutable hyperparameter is resampled with
probability resample_probability, else perturbed (a number multiplied by one
of perturbation_factors, a choice moved to a neighbouring value). A member's
trial then carries the history of the model it holds: the metrics of every
epoch of that model's lineage and its `schedule`, the hyperparameters it
trained with from each epoch on and whose model it copied.

On disk, `pbt.json` holds the round to train next and the exploit decisions
that start it; the decisions are written before they are applied, and applying
them again is harmless, so a search killed at any point resumes.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .._types import ArrayLike
from .fitting import Task, load_model
from .trials import COMPLETED, FAILED, RUNNING, Trial
from .tuners import Tuner, _check_count

if TYPE_CHECKING:  # for annotations only
    from .trials import Objective

STATE_FILE = "pbt.json"


class PopulationBasedTraining(Tuner):
    """Population-based training (Jaderberg et al. 2017), see fastnn.tune.pbt.

    Parameters
    ----------
    build_model : callable or estimator
        As `Tuner`'s.
    population_size : int, default 8
        Members, each a trial (their first values drawn as in RandomSearch).
    perturbation_interval : int, default 2
        Epochs per round.
    hyperparam_mutations : sequence of str or dict, default ()
        The names of the hyperparameters that may change (they must keep the
        layer sizes: learning rate, momentum, weight decay, dropout rates,
        batch_size), or ``{name: None (use its definition) or [values to choose
        from]}``.
    quantile_fraction : float, default 0.25
        The fraction of members replaced each round (0: none, every member
        trains its own configuration throughout).
    resample_probability : float, default 0.25
        The probability that a mutable hyperparameter is redrawn instead of
        perturbed.
    perturbation_factors : (float, float), default (1.2, 0.8)
        The factors a number is multiplied by.
    objective : str or Objective, default 'val_accuracy'
        As `Tuner`'s.
    **options : object
        The other parameters of `Tuner` (seed, directory, project_name,
        overwrite, executor, n_jobs, space).

    Raises
    ------
    TypeError, ValueError
        If an option is invalid.

    Examples
    --------
    >>> from fastnn import nn, tune
    >>> def build_model(hp):
    ...     lr = hp.Float("lr", 1e-4, 1e-1, sampling="log")
    ...     return nn.Sequential([nn.Dense(16, "relu"), nn.Dense(2)], loss="mse", optimizer=nn.SGD(lr))
    >>> pbt = tune.PopulationBasedTraining(build_model, population_size=4, hyperparam_mutations=["lr"],
    ...                                    objective="val_loss", directory="runs",
    ...                                    project_name="pbt")
    """

    kind = "pbt"

    def __init__(self, build_model: Any, population_size: int = 8, perturbation_interval: int = 2,
                 hyperparam_mutations: Union[Sequence[str], Dict[str, Any]] = (),
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: Tuple[float, float] = (1.2, 0.8),
                 objective: Union[str, Objective] = "val_accuracy", **options: Any) -> None:
        self.population_size = _check_count(population_size, "population_size", low=2)
        self.perturbation_interval = _check_count(perturbation_interval, "perturbation_interval")
        if isinstance(hyperparam_mutations, str):
            raise TypeError("hyperparam_mutations must be a list of names or a dict, not a string")
        if not isinstance(hyperparam_mutations, dict):
            hyperparam_mutations = {name: None for name in hyperparam_mutations}
        for name, values in hyperparam_mutations.items():
            if values is not None and (not isinstance(values, (list, tuple)) or not values):
                raise TypeError(f"hyperparam_mutations[{name!r}] must be None or a non-empty list of values")
        self.hyperparam_mutations = dict(hyperparam_mutations)
        if not 0 <= quantile_fraction <= 0.5:
            raise ValueError(f"quantile_fraction must be in [0, 0.5], got {quantile_fraction}")
        if not 0 <= resample_probability <= 1:
            raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability}")
        if not perturbation_factors or any(f <= 0 for f in perturbation_factors):
            raise ValueError(f"perturbation_factors must be positive numbers, got {perturbation_factors!r}")
        self.quantile_fraction, self.resample_probability = quantile_fraction, resample_probability
        self.perturbation_factors = tuple(perturbation_factors)
        options.pop("max_trials", None)
        super().__init__(build_model, objective, self.population_size, **options)

    def _settings(self, seed):
        return {**super()._settings(seed), "population_size": self.population_size,
                "perturbation_interval": self.perturbation_interval}

    def search(self, X: ArrayLike, y: Optional[ArrayLike], epochs: int = 1,
               validation_data: Optional[Tuple[ArrayLike, ...]] = None, validation_split: float = 0.0,
               cv: Optional[int] = None, **fit_kwargs: Any) -> Tuner:
        """Train the population in rounds (as `Tuner.search`).

        Parameters
        ----------
        X : array_like
            The training inputs.
        y : array_like
            The training targets.
        epochs : int, default 1
            Epochs per member in all (rounds of perturbation_interval).
        validation_data : tuple, optional
            ``(X_val, y_val)`` to score on.
        validation_split : float, default 0.0
            Or the fraction of the training data held out.
        cv : None
            Not supported.
        **fit_kwargs : object
            Further arguments of `Sequential.fit`.

        Returns
        -------
        Tuner
            The tuner.
        """
        if cv is not None:
            raise ValueError("population-based training continues each member's model: cv is not supported")
        return super().search(X, y, epochs, validation_data, validation_split, None, **fit_kwargs)

    def _search(self, executor, epochs, fit_kwargs):
        for number in range(self.population_size):
            if number not in self._trials:
                self._trials[number] = Trial(number)
                self.project.write(self._trials[number])
        rounds = math.ceil(epochs / self.perturbation_interval)
        state = self.project.read_state(STATE_FILE) or {"round": 0, "decisions": {}, "applied": True}
        if not state["applied"]:
            self._apply(state["decisions"])
            state["applied"] = True
            self.project.write_state(STATE_FILE, state)
        for r in range(state["round"], rounds):
            target = min((r + 1) * self.perturbation_interval, epochs)
            starting = state["decisions"] if state["round"] == r else {}
            tasks = []
            for trial in self.trials:
                if trial.epochs >= target or (trial.status == FAILED and str(trial.number) not in starting):
                    continue
                start = load_model(self.project.model_path(trial)) if trial.epochs else None
                given = trial.hyperparameters if trial.epochs else None
                tasks.append(Task(trial.number, self.build_model, given, (self.seed, trial.number),
                                  target - trial.epochs, trial.epochs, start,
                                  transplant=str(trial.number) in starting, fit_kwargs=fit_kwargs))
            self._run(executor, iter(tasks), COMPLETED if r == rounds - 1 else RUNNING)
            for trial in self.trials:
                if not trial.schedule and trial.hyperparameters:
                    trial.schedule = [{"epoch": 0, "hyperparameters": dict(trial.hyperparameters),
                                       "copied_from": None}]
                    self.project.write(trial)
            if r == rounds - 1:
                break
            state = {"round": r + 1, "decisions": self._decide(r), "applied": False}
            self.project.write_state(STATE_FILE, state)
            self._apply(state["decisions"])
            state["applied"] = True
            self.project.write_state(STATE_FILE, state)

    def _decide(self, r):
        """{member number (str): {'from': donor number, 'hyperparameters': explored
        values}} for the bottom quantile; random choices from (seed, round)."""
        rng = np.random.default_rng([self.seed, r, 1])
        members = self.trials
        n = int(self.population_size * self.quantile_fraction)
        if n == 0:
            return {}

        def key(t):
            return (0, self.objective.sort_key(t.score), t.number) if t.status != FAILED else (1, 0, t.number)

        ranked = sorted(members, key=key)
        top, bottom = ranked[:n], ranked[-n:]
        decisions = {}
        for member in bottom:
            donor = top[int(rng.integers(len(top)))]
            decisions[str(member.number)] = {"from": donor.number,
                                             "hyperparameters": self._explore(donor, rng)}
        return decisions

    def _explore(self, donor, rng):
        values = dict(donor.hyperparameters)
        for name, choices in self.hyperparam_mutations.items():
            if name not in values:
                continue  # not asked for in this configuration (a branch not taken)
            spec, value = donor.space[name], values[name]
            factor = self.perturbation_factors[int(rng.integers(len(self.perturbation_factors)))]
            resample = rng.random() < self.resample_probability
            if choices is not None:
                choices = list(choices)
                if resample or value not in choices:
                    values[name] = choices[int(rng.integers(len(choices)))]
                else:
                    i = choices.index(value) + (1 if factor > 1 else -1)
                    values[name] = choices[min(max(i, 0), len(choices) - 1)]
            else:
                values[name] = spec.random(rng) if resample else spec.perturb(value, factor, rng)
            if hasattr(values[name], "item"):
                values[name] = values[name].item()
        return values

    def _apply(self, decisions):
        """Each decided member takes its donor's model, metrics and schedule and its
        explored hyperparameters (the weights are given to the new configuration
        when it next trains). Applying twice gives the same records."""
        for number, decision in decisions.items():
            member, donor = self._trials[int(number)], self._trials[decision["from"]]
            values = decision["hyperparameters"]
            member.hyperparameters, member.space = dict(values), dict(donor.space)
            member.metrics, member.score = copy.deepcopy(donor.metrics), donor.score
            member.epochs, member.status, member.error = donor.epochs, RUNNING, None
            member.schedule = copy.deepcopy(donor.schedule) + [
                {"epoch": donor.epochs, "hyperparameters": dict(values), "copied_from": donor.trial_id}]
            old = self.project.write(member, load_model(self.project.model_path(donor)))
            if old is not None:
                self.project.remove_model(old)
