"""Trials, the objective that scores them, and their records on disk.

A project directory (`directory/project_name`) holds:

    project.json              what search this is (tuner kind, objective, seed), written once
    trial_0007.json           one trial: hyperparameters, their definitions, status, score,
                              per-epoch metrics, error, the name of its model file
    trial_0007_e12.npz        its model after 12 epochs (Sequential.save)

Every file is written to a temporary name and renamed into place (os.replace),
so a record is either the old one or the new one, never half written. A model
file is written before the record that names it, and the file a record no
longer names is removed after the record, so a record always names a complete
model file.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from typing import Any, Dict, List, Literal, Optional

import numpy as np

from .._types import Config
from .hp import HyperParameters, spec_from_config

COMPLETED, RUNNING, FAILED, PRUNED = "COMPLETED", "RUNNING", "FAILED", "PRUNED"
STATUSES = (COMPLETED, RUNNING, FAILED, PRUNED)
PROJECT_FORMAT = "fastnn.tune"
PROJECT_VERSION = 1

# history keys for which larger is better (Keras Tuner's rule of thumb); loss and
# error keys are minimised; anything else needs Objective(name, direction)
_MAX_WORDS = ("accuracy", "acc", "auc", "precision", "recall", "f1", "r2", "score")
_MIN_WORDS = ("loss", "error", "mse", "mae")


class Objective:
    """What a trial is scored by: a key of the training history and a direction.

    The score is the key's value at the trial's last epoch (the epoch of the
    model that is kept).

    Parameters
    ----------
    name : str
        A history key ('val_accuracy', 'val_loss', 'loss', ...).
    direction : {'max', 'min'}
        Whether larger or smaller scores are better.

    Raises
    ------
    TypeError
        If `name` is not a non-empty string.
    ValueError
        If `direction` is neither 'max' nor 'min'.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Objective("val_loss", "min").sort_key(0.5)
    0.5
    """

    def __init__(self, name: str, direction: Literal["max", "min"]) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"the objective's name must be a history key, got {name!r}")
        if direction not in ("max", "min"):
            raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
        self.name, self.direction = name, direction

    def sort_key(self, score: float) -> float:
        """Return a key that is smaller for better scores.

        Parameters
        ----------
        score : float
            A score.

        Returns
        -------
        float
            The key.
        """
        return -score if self.direction == "max" else score

    def config(self) -> Config:
        """Return the objective as saved.

        Returns
        -------
        dict
            Its name and direction.
        """
        return {"name": self.name, "direction": self.direction}

    def __eq__(self, other):
        return isinstance(other, Objective) and self.config() == other.config()

    def __repr__(self):
        return f"Objective({self.name!r}, {self.direction!r})"


def get_objective(objective):
    if isinstance(objective, Objective):
        return objective
    if not isinstance(objective, str):
        raise TypeError(f"objective must be a history key or tune.Objective, got {objective!r}")
    words = objective.lower().removeprefix("val_")
    if any(w in words for w in _MIN_WORDS):
        return Objective(objective, "min")
    if any(w in words for w in _MAX_WORDS):
        return Objective(objective, "max")
    raise ValueError(f"cannot tell whether {objective!r} is to be maximised or minimised: pass "
                     f"tune.Objective({objective!r}, 'max') or 'min'")


class Trial:
    """One configuration tried, as its record in the project directory holds it.

    Parameters
    ----------
    number : int
        Its index in the search.
    hyperparameters : dict, optional
        ``{name: value}``.
    space : dict, optional
        ``{name: Spec}`` of those values.
    status : str, default RUNNING
        COMPLETED, RUNNING, FAILED or PRUNED (stopped early by Hyperband).
    score : float, optional
        The objective at the last epoch trained (None until known).
    metrics : dict, optional
        ``{history key: [value per epoch]}``.
    error : str, optional
        Why it FAILED.
    epochs : int, default 0
        Epochs trained.
    schedule : list of dict, optional
        ``[{'epoch': e, 'hyperparameters': {...}, 'copied_from': trial_id}, ...]``
        for population-based training (the values from epoch e on).
    model_file : str, optional
        The name of its saved model in the project directory (None when there is
        none).

    Examples
    --------
    >>> from fastnn import tune
    >>> trial = tune.Trial(7, {"units": 32}, score=0.9, status=tune.COMPLETED)
    >>> trial.trial_id, trial.hp.get("units")
    ('0007', 32)
    """

    def __init__(self, number: int, hyperparameters: Optional[Dict[str, Any]] = None,
                 space: Optional[Dict[str, Any]] = None, status: str = RUNNING, score: Optional[float] = None,
                 metrics: Optional[Dict[str, List[float]]] = None, error: Optional[str] = None,
                 epochs: int = 0, schedule: Any = None, model_file: Optional[str] = None) -> None:
        self.number = number
        self.hyperparameters = dict(hyperparameters or {})
        self.space = dict(space or {})
        self.status, self.score, self.error = status, score, error
        self.metrics = {k: list(v) for k, v in (metrics or {}).items()}
        self.epochs, self.schedule, self.model_file = epochs, list(schedule or []), model_file

    @property
    def trial_id(self) -> str:
        """Its name, the number in four digits ('0007')."""
        return f"{self.number:04d}"

    @property
    def hp(self) -> HyperParameters:
        """The hyperparameters as a HyperParameters object: build_model(trial.hp) builds the configuration."""
        hp = HyperParameters(given=self.hyperparameters)
        hp.space = dict(self.space)
        hp.values = dict(self.hyperparameters)
        return hp

    def to_json(self) -> Dict[str, Any]:
        """Return the trial's record.

        Returns
        -------
        dict
            JSON-able.
        """
        return {"trial_id": self.trial_id, "number": self.number, "hyperparameters": self.hyperparameters,
                "space": {k: s.config() for k, s in self.space.items()}, "status": self.status,
                "score": self.score, "metrics": self.metrics, "error": self.error, "epochs": self.epochs,
                "schedule": self.schedule, "model_file": self.model_file}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> Trial:
        """Rebuild a trial from its record.

        Parameters
        ----------
        d : dict
            A record from `to_json`.

        Returns
        -------
        Trial
            The trial.
        """
        if not isinstance(d, dict):
            raise ValueError("the record is not a JSON object")
        number = d.get("number")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"'number' must be an integer >= 0, got {number!r}")
        if d.get("status") not in STATUSES:
            raise ValueError(f"'status' must be one of {STATUSES}, got {d.get('status')!r}")
        for key, kind in (("hyperparameters", dict), ("space", dict), ("metrics", dict), ("schedule", list)):
            if not isinstance(d.get(key), kind):
                raise ValueError(f"{key!r} must be a JSON {kind.__name__}")
        score = d.get("score")
        if score is not None and not isinstance(score, (int, float)):
            raise ValueError(f"'score' must be a number or null, got {score!r}")
        model_file = d.get("model_file")
        if model_file is not None and not re.fullmatch(r"trial_\d+_e\d+\.(npz|pkl)", str(model_file)):
            raise ValueError(f"'model_file' is not a model file name of this project: {model_file!r}")
        space = {k: spec_from_config(c) for k, c in d["space"].items()}
        return cls(number, d["hyperparameters"], space, d["status"], score, d["metrics"], d.get("error"),
                   int(d.get("epochs", 0)), d["schedule"], model_file)

    def __repr__(self):
        return (f"Trial({self.trial_id}, {self.status}, score={self.score}, epochs={self.epochs}, "
                f"hyperparameters={self.hyperparameters})")


def score_of(metrics, objective, epoch=None):
    """The objective's value after `epoch` epochs (None: the last) from per-epoch
    metrics; raises ValueError when the history has no such key or it is not finite."""
    values = metrics.get(objective.name)
    if not values:
        raise ValueError(f"the training history has no {objective.name!r} (it has {sorted(metrics)}); "
                         "pass validation data for val_ keys, or choose another objective")
    value = float(values[-1 if epoch is None else epoch - 1])
    if not math.isfinite(value):
        raise ValueError(f"the objective {objective.name} is {value}")
    return value


def _write_atomic(path, write, durable=True):
    """write(f) into a temporary file beside `path`, then rename it to `path`: a
    killed process leaves the old file or the new one. durable: also flush it to
    the disk first (to survive a crash of the machine; not needed for records
    that are rewritten anyway, such as a RUNNING trial's)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path, obj, durable=True):
    # NaN and infinity as Python's json writes and reads them (a validation loss
    # can overflow while training goes on)
    text = json.dumps(obj, indent=1).encode()
    _write_atomic(path, lambda f: f.write(text), durable)


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable fastnn.tune record: {exc}") from None


class Project:
    """The records of one search in `directory/project_name`."""

    def __init__(self, directory, project_name, settings, overwrite):
        """settings: a JSON-able dict (tuner kind, objective, seed...) that a resumed
        search must match; overwrite: start from an empty directory."""
        if not isinstance(project_name, str) or not project_name or os.sep in project_name:
            raise ValueError(f"project_name must be a plain directory name, got {project_name!r}")
        self.path = os.path.join(os.fspath(directory), project_name)
        header = os.path.join(self.path, "project.json")
        if overwrite and os.path.isdir(self.path):
            if os.listdir(self.path) and not os.path.exists(header):
                raise ValueError(f"{self.path} is not a fastnn.tune project (no project.json); "
                                 "refusing to delete it with overwrite=True")
            shutil.rmtree(self.path)
        os.makedirs(self.path, exist_ok=True)
        if not os.path.exists(header):
            if os.listdir(self.path):
                raise ValueError(f"{self.path} holds files but no project.json: not a fastnn.tune project; "
                                 "choose another directory or project_name")
            _write_json(header, {"format": PROJECT_FORMAT, "version": PROJECT_VERSION, **settings})
        stored = _read_json(header)
        if not isinstance(stored, dict) or stored.get("format") != PROJECT_FORMAT:
            raise ValueError(f"{header} is not a fastnn.tune project file")
        if stored.get("version") != PROJECT_VERSION:
            raise ValueError(f"{header} has version {stored.get('version')!r}; this fastnn reads version "
                             f"{PROJECT_VERSION}")
        for key, value in settings.items():
            if key != "seed" and stored.get(key) != value:
                raise ValueError(f"{self.path} holds a search with {key}={stored.get(key)!r}, not {value!r}; "
                                 "pass overwrite=True to start again, or another project_name")
        self.settings = stored

    def trial_path(self, number):
        return os.path.join(self.path, f"trial_{number:04d}.json")

    def load_trials(self):
        """{number: Trial} of every record in the directory."""
        trials = {}
        for name in sorted(os.listdir(self.path)):
            path = os.path.join(self.path, name)
            if name.endswith(".tmp"):  # left by a process killed while writing
                os.remove(path)
                continue
            if not re.fullmatch(r"trial_\d+\.json", name):
                continue
            try:
                trial = Trial.from_json(_read_json(path))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path} is not a valid trial record: {exc}") from None
            if name != f"trial_{trial.number:04d}.json":
                raise ValueError(f"{path} holds trial {trial.number}")
            if trial.model_file and not os.path.exists(os.path.join(self.path, trial.model_file)):
                raise ValueError(f"{path} names the model {trial.model_file}, which is missing")
            trials[trial.number] = trial
        return trials

    def write(self, trial, model=None):
        """Write `trial`'s record, and first `model` (a Sequential) as its model
        file after trial.epochs epochs. Returns the name of the model file the
        record named before, if it changed (the caller removes it)."""
        old = trial.model_file
        if model is not None:
            from .fitting import model_suffix, save_model

            trial.model_file = f"trial_{trial.number:04d}_e{trial.epochs}{model_suffix(model)}"
            _write_atomic(os.path.join(self.path, trial.model_file), lambda f: save_model(model, f))
        _write_json(self.trial_path(trial.number), trial.to_json(), durable=trial.status != RUNNING)
        return old if old != trial.model_file else None

    def remove_model(self, name):
        path = os.path.join(self.path, name)
        if os.path.exists(path):
            os.remove(path)

    def model_path(self, trial):
        if trial.model_file is None:
            raise ValueError(f"trial {trial.trial_id} has no saved model ({trial.status})")
        return os.path.join(self.path, trial.model_file)

    def write_state(self, name, obj):
        _write_json(os.path.join(self.path, name), obj)

    def read_state(self, name):
        path = os.path.join(self.path, name)
        return _read_json(path) if os.path.exists(path) else None


def as_float_list(values):
    return [float(v) for v in np.asarray(values, dtype=float).ravel()]
