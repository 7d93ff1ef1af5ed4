"""Hyperparameters, define-by-run: `build_model(hp)` asks `hp.Int(...)`,
`hp.Float(...)`, `hp.Choice(...)`, `hp.Boolean(...)`, `hp.Fixed(...)` for each
value it needs, and only the values it asks for are drawn (a conditional space:
a branch not taken draws nothing).

Each call returns a value and records its definition (a spec) in `hp.space`
and the value in `hp.values`, in the order asked. Where the value comes from
is the tuner's business: values given in advance (a grid point, an Optuna
proposal, a PBT member's mutated values), or `draw(spec)`, a function the tuner
passes (random draws), or the spec's default.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence

import numpy as np

from .._types import Config, RandomState

SAMPLINGS = ("linear", "log")


def _check_sampling(sampling, low):
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be 'linear' or 'log', got {sampling!r}")
    if sampling == "log" and low <= 0:
        raise ValueError(f"log sampling needs min_value > 0, got {low}")


class Spec:
    """The definition of one hyperparameter (the base of Int, Float, Choice, Boolean, Fixed).

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Int("units", 16, 64, step=16).grid()
    [16, 32, 48, 64]
    """

    kind = "spec"
    name: str  # declared for the checker: every subclass sets it

    def config(self) -> Config:
        """Return the definition as saved with a trial.

        Returns
        -------
        dict
            Its kind, name and options.
        """
        return {"kind": self.kind, **{k: v for k, v in vars(self).items()}}

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config()

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class _Range(Spec):
    """Int and Float: min_value..max_value (both included), on a step grid when
    step is given (with log sampling, step is a factor: min, min*step, ...)."""

    _cast: Callable[[Any], Any]  # declared for the checker: int or float, by subclass

    def __init__(self, name: str, min_value: Any, max_value: Any, step: Any,
                 sampling: Literal["linear", "log"], default: Any) -> None:
        if not min_value <= max_value:
            raise ValueError(f"hyperparameter {name!r}: min_value {min_value} > max_value {max_value}")
        _check_sampling(sampling, min_value)
        if step is not None and (step <= 0 or (sampling == "log" and step <= 1)):
            raise ValueError(f"hyperparameter {name!r}: step must be > 0 (> 1 with log sampling), got {step}")
        self.name, self.min_value, self.max_value = name, min_value, max_value
        self.step, self.sampling = step, sampling
        self.default = min_value if default is None else default
        if not self.contains(self.default):
            raise ValueError(f"hyperparameter {name!r}: default {default!r} is not in its range")

    def grid(self) -> List[Any]:
        """List the values of a grid search.

        Returns
        -------
        list
            The values, in order.
        """
        if self.step is None:
            raise ValueError(f"a grid over Float {self.name!r} needs a step")
        values, v = [], self.min_value
        while v <= self.max_value * (1 + 1e-12):
            values.append(self._cast(v))
            v = v * self.step if self.sampling == "log" else self.min_value + len(values) * self.step
        return values

    def contains(self, value: Any) -> bool:
        """Return whether `value` is one of the hyperparameter's values.

        Parameters
        ----------
        value : object
            A value.

        Returns
        -------
        bool
            Whether it is allowed.
        """
        if not isinstance(value, (int, float, np.number)) or not self.min_value <= value <= self.max_value:
            return False
        return self.step is None or math.isclose(self._snap(value), value, rel_tol=1e-9)

    def _snap(self, v):
        """The nearest allowed value to v (in the range, on the step grid)."""
        v = min(max(v, self.min_value), self.max_value)
        if self.step is not None:
            if self.sampling == "log":
                k = round(math.log(v / self.min_value) / math.log(self.step))
                v = self.min_value * self.step**k
            else:
                v = self.min_value + round((v - self.min_value) / self.step) * self.step
            v = min(v, self.max_value)
        return self._cast(v)

    def random(self, rng: RandomState) -> Any:
        """Draw a value.

        Parameters
        ----------
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The value.
        """
        if self.sampling == "log":
            v = math.exp(rng.uniform(math.log(self.min_value), math.log(self.max_value)))
        else:
            v = rng.uniform(self.min_value, self.max_value)
        return self._snap(v)

    def perturb(self, value: Any, factor: float, rng: RandomState) -> Any:
        """Return a value near `value`, for population-based training.

        Parameters
        ----------
        value : object
            The current value.
        factor : float
            The multiplier of a number (one of perturbation_factors).
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The perturbed value, within the hyperparameter's values.
        """
        return self._snap(value * factor)

    def optuna_distribution(self) -> Any:
        """Return the Optuna distribution of the values (for BayesianOptimization).

        Returns
        -------
        optuna.distributions.BaseDistribution
            The distribution.
        """
        import optuna

        if self.step is not None and self.sampling == "log":  # Optuna has no geometric step
            return optuna.distributions.CategoricalDistribution(self.grid())
        if isinstance(self, Int):
            return optuna.distributions.IntDistribution(self.min_value, self.max_value,
                                                        log=self.sampling == "log", step=self.step or 1)
        return optuna.distributions.FloatDistribution(self.min_value, self.max_value,
                                                      log=self.sampling == "log", step=self.step)


class Int(_Range):
    """An integer hyperparameter in [min_value, max_value].

    Parameters
    ----------
    name : str
        The hyperparameter's name (unique in a search).
    min_value : int
        The smallest value.
    max_value : int
        The largest value.
    step : int or None, default 1
        The grid step (with log sampling, a factor: min, min*step, ...; None:
        every integer).
    sampling : {'linear', 'log'}, default 'linear'
        How values are drawn; 'log' (min_value > 0) draws uniformly in log space.
    default : int, optional
        The value when none is drawn (default: min_value).

    Raises
    ------
    TypeError
        If a bound or the step is not an integer.
    ValueError
        If min_value > max_value, the step or sampling is invalid, or the default
        is out of range.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Int("layers", 1, 3).grid()
    [1, 2, 3]
    """
    kind = "int"

    def __init__(self, name: str, min_value: int, max_value: int, step: Optional[int] = 1,
                 sampling: Literal["linear", "log"] = "linear", default: Optional[int] = None) -> None:
        for arg, v in (("min_value", min_value), ("max_value", max_value), ("step", step)):
            if v is None and arg == "step":
                continue  # every integer (how a log-sampled Int with step 1 is stored)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"hyperparameter {name!r}: {arg} must be an integer, got {v!r}")
        if sampling == "log" and step == 1:
            step = None  # every integer: drawn log-uniformly, rounded
        super().__init__(name, int(min_value), int(max_value), step, sampling, default)

    def _cast(self, v):
        return int(round(v))

    def grid(self) -> List[Any]:
        """List the values of a grid search.

        Returns
        -------
        list
            The values, in order.
        """
        if self.step is None:
            return list(range(self.min_value, self.max_value + 1))
        return super().grid()

    def contains(self, value: Any) -> bool:
        """Return whether `value` is one of the hyperparameter's values.

        Parameters
        ----------
        value : object
            A value.

        Returns
        -------
        bool
            Whether it is allowed.
        """
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        return integer and super().contains(value)

    def perturb(self, value: Any, factor: float, rng: RandomState) -> Any:
        """Return a value near `value`, for population-based training.

        Parameters
        ----------
        value : object
            The current value.
        factor : float
            The multiplier of a number (one of perturbation_factors).
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The perturbed value, within the hyperparameter's values.
        """
        new = self._snap(value * factor)
        if new == value:  # a factor too small to move an integer: one step in its direction
            grid = self.grid()
            i = grid.index(value) if value in grid else 0
            new = grid[min(max(i + (1 if factor > 1 else -1), 0), len(grid) - 1)]
        return new


class Float(_Range):
    """A real hyperparameter in [min_value, max_value].

    Parameters
    ----------
    name : str
        The hyperparameter's name (unique in a search).
    min_value : float
        The smallest value.
    max_value : float
        The largest value.
    step : float, optional
        The grid step (with log sampling, a factor; None: continuous, no grid).
    sampling : {'linear', 'log'}, default 'linear'
        How values are drawn; 'log' (min_value > 0) draws uniformly in log space.
    default : float, optional
        The value when none is drawn (default: min_value).

    Raises
    ------
    ValueError
        If min_value > max_value, the step or sampling is invalid, or the default
        is out of range.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Float("lr", 1e-4, 1e-2, step=10, sampling="log").grid()
    [0.0001, 0.001, 0.01]
    """
    kind = "float"

    def __init__(self, name: str, min_value: float, max_value: float, step: Optional[float] = None,
                 sampling: Literal["linear", "log"] = "linear", default: Optional[float] = None) -> None:
        super().__init__(name, float(min_value), float(max_value), step, sampling, default)

    def _cast(self, v):
        return float(v)


class Choice(Spec):
    """A hyperparameter taking one of `values`.

    Values are numbers, strings or booleans, all of one type; perturbing moves to
    the neighbouring value in the list.

    Parameters
    ----------
    name : str
        The hyperparameter's name (unique in a search).
    values : sequence
        The values.
    default : object, optional
        The value when none is drawn (default: the first).

    Raises
    ------
    ValueError
        If `values` is empty or the default is not among them.
    TypeError
        If the values are not all of one type.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Choice("activation", ["relu", "tanh"]).grid()
    ['relu', 'tanh']
    """

    kind = "choice"

    def __init__(self, name: str, values: Sequence[Any], default: Any = None) -> None:
        values = list(values)
        if not values:
            raise ValueError(f"hyperparameter {name!r}: values is empty")
        if len({type(v) for v in values}) > 1 and not all(isinstance(v, (int, float)) for v in values):
            raise TypeError(f"hyperparameter {name!r}: values must all be of one type, got {values!r}")
        for v in values:
            if not isinstance(v, (int, float, str, bool)):
                raise TypeError(f"hyperparameter {name!r}: values must be numbers, strings or booleans")
        self.name, self.values = name, values
        self.default = values[0] if default is None else default
        if self.default not in values:
            raise ValueError(f"hyperparameter {name!r}: default {default!r} is not one of its values")

    def grid(self) -> List[Any]:
        """List the values of a grid search.

        Returns
        -------
        list
            The values, in order.
        """
        return list(self.values)

    def contains(self, value: Any) -> bool:
        """Return whether `value` is one of the hyperparameter's values.

        Parameters
        ----------
        value : object
            A value.

        Returns
        -------
        bool
            Whether it is allowed.
        """
        # True == 1 in Python: a boolean matches only a boolean
        return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in self.values)

    def random(self, rng: RandomState) -> Any:
        """Draw a value.

        Parameters
        ----------
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The value.
        """
        return self.values[int(rng.integers(len(self.values)))]

    def perturb(self, value: Any, factor: float, rng: RandomState) -> Any:
        """Return a value near `value`, for population-based training.

        Parameters
        ----------
        value : object
            The current value.
        factor : float
            The multiplier of a number (one of perturbation_factors).
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The perturbed value, within the hyperparameter's values.
        """
        i = self.values.index(value)
        return self.values[min(max(i + (1 if factor > 1 else -1), 0), len(self.values) - 1)]

    def optuna_distribution(self) -> Any:
        """Return the Optuna distribution of the values (for BayesianOptimization).

        Returns
        -------
        optuna.distributions.BaseDistribution
            The distribution.
        """
        import optuna

        return optuna.distributions.CategoricalDistribution(self.values)


class Boolean(Choice):
    """A True or False hyperparameter.

    Parameters
    ----------
    name : str
        The hyperparameter's name (unique in a search).
    default : bool, default False
        The value when none is drawn.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Boolean("batch_norm").grid()
    [False, True]
    """
    kind = "boolean"

    def __init__(self, name: str, default: bool = False) -> None:
        super().__init__(name, [False, True], default=bool(default))

    def config(self) -> Config:
        """Return the definition as saved with a trial.

        Returns
        -------
        dict
            Its kind, name and options.
        """
        return {"kind": self.kind, "name": self.name, "default": self.default}

    def perturb(self, value: Any, factor: float, rng: RandomState) -> Any:
        """Return a value near `value`, for population-based training.

        Parameters
        ----------
        value : object
            The current value.
        factor : float
            The multiplier of a number (one of perturbation_factors).
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The perturbed value, within the hyperparameter's values.
        """
        return not value


class Fixed(Spec):
    """A hyperparameter with one value (recorded with the trials, never searched).

    Parameters
    ----------
    name : str
        The hyperparameter's name (unique in a search).
    value : object
        The value.

    Examples
    --------
    >>> from fastnn import tune
    >>> tune.Fixed("epochs", 10).grid()
    [10]
    """
    kind = "fixed"

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value, self.default = name, value, value

    def config(self) -> Config:
        """Return the definition as saved with a trial.

        Returns
        -------
        dict
            Its kind, name and options.
        """
        return {"kind": self.kind, "name": self.name, "value": self.value}

    def grid(self) -> List[Any]:
        """List the values of a grid search.

        Returns
        -------
        list
            The values, in order.
        """
        return [self.value]

    def contains(self, value: Any) -> bool:
        """Return whether `value` is one of the hyperparameter's values.

        Parameters
        ----------
        value : object
            A value.

        Returns
        -------
        bool
            Whether it is allowed.
        """
        return value == self.value

    def random(self, rng: RandomState) -> Any:
        """Draw a value.

        Parameters
        ----------
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The value.
        """
        return self.value

    def perturb(self, value: Any, factor: float, rng: RandomState) -> Any:
        """Return a value near `value`, for population-based training.

        Parameters
        ----------
        value : object
            The current value.
        factor : float
            The multiplier of a number (one of perturbation_factors).
        rng : numpy.random.Generator
            The random draws.

        Returns
        -------
        object
            The perturbed value, within the hyperparameter's values.
        """
        return self.value


KINDS = {cls.kind: cls for cls in (Int, Float, Choice, Boolean, Fixed)}


def spec_from_config(config):
    """The spec a `Spec.config()` dict describes (as stored in trial records)."""
    if not isinstance(config, dict) or config.get("kind") not in KINDS:
        raise ValueError(f"not a hyperparameter definition: {config!r}")
    options = {k: v for k, v in config.items() if k != "kind"}
    return KINDS[config["kind"]](**options)


class HyperParameters:
    """What ``build_model(hp)`` receives: asks for hyperparameters, returns values.

    ``values`` holds ``{name: value}`` of the values asked for, in order; ``space``
    ``{name: Spec}``.

    Parameters
    ----------
    given : dict, optional
        Values decided in advance, ``{name: value}``.
    draw : callable, optional
        ``draw(spec) -> value`` for names not given (None: the spec's default).

    Examples
    --------
    >>> from fastnn import tune
    >>> hp = tune.HyperParameters(given={"units": 64})
    >>> hp.Int("units", 16, 128, step=16), hp.Float("lr", 1e-4, 1e-2, sampling="log")
    (64, 0.0001)
    """

    def __init__(self, given: Optional[Dict[str, Any]] = None,
                 draw: Optional[Callable[[Spec], Any]] = None) -> None:
        self.values = {}  # type: ignore[var-annotated]
        self.space = {}  # type: ignore[var-annotated]
        self._given = dict(given or {})
        self._draw = draw

    def _ask(self, spec):
        name = spec.name
        if not isinstance(name, str) or not name:
            raise TypeError(f"a hyperparameter name must be a non-empty string, got {name!r}")
        if name in self.space:
            if self.space[name] != spec:
                raise ValueError(f"hyperparameter {name!r} is defined twice differently: "
                                 f"{self.space[name]!r} and {spec!r}")
            return self.values[name]
        if name in self._given:
            value = self._given[name]
            if not spec.contains(value):
                raise ValueError(f"hyperparameter {name!r}: the value {value!r} is not in {spec!r}")
        elif self._draw is not None:
            value = self._draw(spec)
        else:
            value = spec.default
        self.space[name] = spec
        self.values[name] = value
        return value

    def Int(self, name: str, min_value: int, max_value: int, step: Optional[int] = 1,
            sampling: Literal["linear", "log"] = "linear", default: Optional[int] = None) -> int:
        """Ask for the value of a hyperparameter defined as `Int`.

        Parameters
        ----------
        name : str
            The hyperparameter's name.
        min_value : int
            The smallest value.
        max_value : int
            The largest value.
        step : int or None, default 1
            The grid step.
        sampling : {'linear', 'log'}, default 'linear'
            How values are drawn.
        default : int, optional
            The value when none is drawn.

        Returns
        -------
        int
            The value: given, drawn, or the default.
        """
        return self._ask(Int(name, min_value, max_value, step, sampling, default))

    def Float(self, name: str, min_value: float, max_value: float, step: Optional[float] = None,
              sampling: Literal["linear", "log"] = "linear", default: Optional[float] = None) -> float:
        """Ask for the value of a hyperparameter defined as `Float`.

        Parameters
        ----------
        name : str
            The hyperparameter's name.
        min_value : float
            The smallest value.
        max_value : float
            The largest value.
        step : float, optional
            The grid step.
        sampling : {'linear', 'log'}, default 'linear'
            How values are drawn.
        default : float, optional
            The value when none is drawn.

        Returns
        -------
        float
            The value: given, drawn, or the default.
        """
        return self._ask(Float(name, min_value, max_value, step, sampling, default))

    def Choice(self, name: str, values: Sequence[Any], default: Any = None) -> Any:
        """Ask for the value of a hyperparameter defined as `Choice`.

        Parameters
        ----------
        name : str
            The hyperparameter's name.
        values : sequence
            The values.
        default : object, optional
            The value when none is drawn.

        Returns
        -------
        object
            The value: given, drawn, or the default.
        """
        return self._ask(Choice(name, values, default))

    def Boolean(self, name: str, default: bool = False) -> bool:
        """Ask for the value of a hyperparameter defined as `Boolean`.

        Parameters
        ----------
        name : str
            The hyperparameter's name.
        default : bool, default False
            The value when none is drawn.

        Returns
        -------
        bool
            The value: given, drawn, or the default.
        """
        return self._ask(Boolean(name, default))

    def Fixed(self, name: str, value: Any) -> Any:
        """Ask for the value of a hyperparameter defined as `Fixed`.

        Parameters
        ----------
        name : str
            The hyperparameter's name.
        value : object
            The value.

        Returns
        -------
        object
            The value: given, drawn, or the default.
        """
        return self._ask(Fixed(name, value))

    def get(self, name: str) -> Any:
        """Return the value of `name` (asked for earlier, or given).

        Parameters
        ----------
        name : str
            The hyperparameter's name.

        Returns
        -------
        object
            The value.

        Raises
        ------
        KeyError
            If `name` was neither asked for nor given.
        """
        if name in self.values:
            return self.values[name]
        if name in self._given:
            return self._given[name]
        raise KeyError(f"no hyperparameter {name!r}")

    def __getitem__(self, name):
        return self.get(name)

    def __contains__(self, name):
        return name in self.values or name in self._given

    def __repr__(self):
        return f"HyperParameters({self.values!r})"


def random_draw(seed):
    """draw function for HyperParameters: each value from a generator of its own,
    seeded by (seed..., a hash of its name), so a value does not depend on which
    other values were drawn before it (a conditional branch does not shift the
    draws after it) and any process draws the same."""
    base = [int(s) for s in np.atleast_1d(seed)]

    def draw(spec):
        return spec.random(np.random.default_rng(base + [zlib.crc32(spec.name.encode())]))

    return draw
