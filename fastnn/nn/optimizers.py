"""Optimizers and learning-rate schedules.

An optimizer updates the model's whole flat parameter buffer with ONE fused
backend kernel call per step; its state (momentum, moment estimates) lives in
buffers of the same layout as the parameters, allocated by `bind`. The arrays of
a step go through the kernel's fast precondition (`backend.fast`, see
fastnn.backends.spec): a few structural checks, then the backend's
implementation; anything they do not accept goes through the public,
validating kernel.

An L2 penalty on the leading part of the buffer (a weights block) can be folded
into the step (`step(..., l2=..., l2_size=...)`) by the optimizers whose weight
decay is an L2 gradient: the kernel then adds l2 * param to the gradient as it
reads it, which saves a separate pass over the parameters and gradients.

A schedule gives the learning rate of each step. Per-step schedules depend on the
step count t; per-epoch schedules change at `end_epoch`, which the fit loop calls
with the epoch's training loss and the number of samples seen so far (callers
that write their own loop around `Sequential.train_step` call
`optimizer.end_epoch(loss)` themselves).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Type, Union

import numpy as np

from .._types import Array, ArrayLike, Backend, Config
from ..backends import _checks as chk


# --------------------------------------------------------------------- schedules
class Schedule:
    """Constant learning rate; the base of every schedule.

    A schedule gives the learning rate of each optimizer step (`lr_at`); per-epoch
    schedules change at `end_epoch`.

    Examples
    --------
    >>> from fastnn import nn
    >>> schedule = nn.Schedule()
    >>> schedule.reset(0.1)
    >>> schedule.lr_at(1)
    0.1
    """

    name = "constant"

    def reset(self, lr0: float) -> None:
        """Start from the initial rate (called when the optimizer is bound).

        Parameters
        ----------
        lr0 : float
            The initial learning rate.
        """
        self.lr0 = self.lr = lr0

    def lr_at(self, t: int) -> float:
        """Return the rate of an optimizer step.

        Parameters
        ----------
        t : int
            The step, counted from 1.

        Returns
        -------
        float
            The learning rate.
        """
        return self.lr

    def end_epoch(self, epoch: int, loss: Optional[float], samples_seen: int) -> bool:
        """Update the rate after an epoch.

        Parameters
        ----------
        epoch : int
            The epoch that ended, counted from 1.
        loss : float or None
            Its training loss.
        samples_seen : int
            The samples seen so far.

        Returns
        -------
        bool
            True to ask training to stop.
        """
        return False

    def config(self) -> Config:
        return {"name": self.name}

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({options})"


class InverseScaling(Schedule):
    """Learning rate ``lr0 / t^power_t``.

    Parameters
    ----------
    power_t : float, default 0.5
        The exponent.
    per : {'epoch', 'step'}, default 'epoch'
        'epoch' is scikit-learn's invscaling: updated at the end of each epoch
        with t = samples seen + 1; 'step' uses the step count t.

    Examples
    --------
    >>> from fastnn import nn
    >>> schedule = nn.InverseScaling(per="step")
    >>> schedule.reset(0.1)
    >>> schedule.lr_at(4)
    0.05
    """

    name = "invscaling"

    def __init__(self, power_t: float = 0.5, per: Literal["epoch", "step"] = "epoch") -> None:
        self.power_t = chk.real(power_t, "power_t", low=0)
        self.per = chk.choice(per, "per", ("epoch", "step"))

    def lr_at(self, t: int) -> float:
        return self.lr0 / t**self.power_t if self.per == "step" else self.lr

    def end_epoch(self, epoch: int, loss: Optional[float], samples_seen: int) -> bool:
        if self.per == "epoch":
            self.lr = self.lr0 / (samples_seen + 1) ** self.power_t
        return False

    def config(self) -> Config:
        return {"name": self.name, "power_t": self.power_t, "per": self.per}


class StepDecay(Schedule):
    """Learning rate ``lr0 * gamma^(epoch // step_size)``.

    Parameters
    ----------
    step_size : int, default 10
        Epochs between two decays.
    gamma : float, default 0.1
        The factor of each decay.

    Examples
    --------
    >>> from fastnn import nn
    >>> optimizer = nn.SGD(0.1, schedule=nn.StepDecay(step_size=2, gamma=0.5))
    """

    name = "step"

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        self.step_size = chk.integer(step_size, "step_size", low=1)
        self.gamma = chk.real(gamma, "gamma", low=0)

    def end_epoch(self, epoch: int, loss: Optional[float], samples_seen: int) -> bool:
        self.lr = self.lr0 * self.gamma ** (epoch // self.step_size)
        return False

    def config(self) -> Config:
        return {"name": self.name, "step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """Learning rate ``lr0 * gamma^epoch``.

    Parameters
    ----------
    gamma : float, default 0.95
        The factor per epoch.

    Examples
    --------
    >>> from fastnn import nn
    >>> optimizer = nn.Adam(1e-3, schedule=nn.ExponentialDecay(0.9))
    """

    name = "exponential"

    def __init__(self, gamma: float = 0.95) -> None:
        self.gamma = chk.real(gamma, "gamma", low=0)

    def end_epoch(self, epoch: int, loss: Optional[float], samples_seen: int) -> bool:
        self.lr = self.lr0 * self.gamma**epoch
        return False

    def config(self) -> Config:
        return {"name": self.name, "gamma": self.gamma}


class CosineDecay(Schedule):
    """Cosine annealing from lr0 to min_lr over `epochs` epochs, then min_lr.

    Parameters
    ----------
    epochs : int
        The length of the annealing.
    min_lr : float, default 0.0
        The final rate.

    Examples
    --------
    >>> from fastnn import nn
    >>> optimizer = nn.SGD(0.1, momentum=0.9, schedule=nn.CosineDecay(epochs=20))
    """

    name = "cosine"

    def __init__(self, epochs: int, min_lr: float = 0.0) -> None:
        self.epochs = chk.integer(epochs, "epochs", low=1)
        self.min_lr = chk.real(min_lr, "min_lr", low=0)

    def end_epoch(self, epoch: int, loss: Optional[float], samples_seen: int) -> bool:
        progress = min(epoch, self.epochs) / self.epochs
        self.lr = self.min_lr + (self.lr0 - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return False

    def config(self) -> Config:
        return {"name": self.name, "epochs": self.epochs, "min_lr": self.min_lr}


class ReduceOnPlateau(Schedule):
    """Multiply the rate by `factor` when the epoch loss stops improving.

    The rate is multiplied when the loss has not improved on the best so far by
    at least `tol` for more than `patience` epochs in a row. With stop_at_min_lr,
    a plateau reached at a rate <= min_lr asks training to stop instead;
    otherwise the rate never goes below min_lr. The schedule 'adaptive' is
    scikit-learn's rule: factor 1/5, tol 1e-4, stop at 1e-6, patience 2 as its
    documentation states (its code waits n_iter_no_change epochs: pass that as
    patience to match it).

    Parameters
    ----------
    factor : float, default 0.1
        The factor of each reduction.
    patience : int, default 10
        Epochs without improvement before a reduction.
    tol : float, default 1e-4
        The least improvement that counts.
    min_lr : float, default 0.0
        The smallest rate.
    stop_at_min_lr : bool, default False
        Whether a plateau at min_lr stops training.

    Examples
    --------
    >>> from fastnn import nn
    >>> optimizer = nn.SGD(0.1, schedule=nn.ReduceOnPlateau(factor=0.5, patience=3))
    """

    name = "plateau"

    def __init__(self, factor: float = 0.1, patience: int = 10, tol: float = 1e-4, min_lr: float = 0.0,
                 stop_at_min_lr: bool = False) -> None:
        self.factor = chk.real(factor, "factor", 0, 1, low_open=True, high_open=True)
        self.patience = chk.integer(patience, "patience", low=0)
        self.tol = chk.real(tol, "tol", low=0)
        self.min_lr = chk.real(min_lr, "min_lr", low=0)
        self.stop_at_min_lr = bool(stop_at_min_lr)

    @classmethod
    def adaptive(cls, patience: int = 2) -> ReduceOnPlateau:
        return cls(factor=0.2, patience=patience, tol=1e-4, min_lr=1e-6, stop_at_min_lr=True)

    def reset(self, lr0: float) -> None:
        super().reset(lr0)
        self.best = math.inf
        self.bad_epochs = 0

    def end_epoch(self, epoch: int, loss: Optional[float], samples_seen: int) -> bool:
        if loss is None:
            return False
        self.bad_epochs = self.bad_epochs + 1 if loss > self.best - self.tol else 0
        self.best = min(self.best, loss)
        if self.bad_epochs > self.patience:
            self.bad_epochs = 0
            if self.stop_at_min_lr and self.lr <= self.min_lr:
                return True
            self.lr *= self.factor
            if not self.stop_at_min_lr:
                self.lr = max(self.lr, self.min_lr)
        return False

    def config(self) -> Config:
        return {"name": self.name, "factor": self.factor, "patience": self.patience, "tol": self.tol,
                "min_lr": self.min_lr, "stop_at_min_lr": self.stop_at_min_lr}


SCHEDULES: Dict[str, Type[Schedule]] = {
    cls.name: cls
    for cls in (Schedule, InverseScaling, StepDecay, ExponentialDecay, CosineDecay, ReduceOnPlateau)}


def get_schedule(schedule: Union[str, Schedule, None]) -> Schedule:
    """Return a learning-rate schedule from a name or a Schedule.

    Parameters
    ----------
    schedule : str, Schedule or None
        None (a constant rate), a name (``'constant'``, ``'invscaling'``,
        ``'step'``, ``'exponential'``, ``'adaptive'``: scikit-learn's, reducing on
        plateaus), or a Schedule (returned as it is).

    Returns
    -------
    Schedule
        The schedule.

    Raises
    ------
    ValueError
        If the name is unknown, or is ``'cosine'`` (which needs its length: pass
        ``CosineDecay(epochs=...)``).
    TypeError
        If `schedule` is of another type.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.get_schedule("invscaling")
    InverseScaling(power_t=0.5, per='epoch')
    """
    if schedule is None:
        return Schedule()
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a schedule name or a Schedule, got {type(schedule).__name__}")
    if schedule == "adaptive":
        return ReduceOnPlateau.adaptive()
    names = sorted(SCHEDULES) + ["adaptive"]
    cls = SCHEDULES[chk.choice(schedule, "schedule", names)]
    if cls is CosineDecay:
        raise ValueError("the cosine schedule needs its length: pass CosineDecay(epochs=...)")
    return cls()


def schedule_from_config(config):
    options = {k: v for k, v in config.items() if k != "name"}
    return SCHEDULES[chk.choice(config.get("name"), "schedule", SCHEDULES)](**options)


# -------------------------------------------------------------------- optimizers
CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")

def _shrink(params, grads, state, factor):
    """params *= factor (decoupled weight decay; None: nothing), only on arrays the
    step's kernel will accept: a call it refuses changes nothing."""
    if factor is not None and all(a.shape == params.shape and a.dtype == params.dtype
                                  for a in (grads, *state.values())):
        params *= factor  # params (n,), in place


class Optimizer:
    """The base of the optimizers: one fused kernel call updates the whole model.

    Subclasses list their state buffers in `state_names` and make the kernel call
    in ``_step``. Gradient clipping (as in Keras; at most one option) applies to
    the gradient buffer before the step, which then adds the optimizer's own
    weight decay.

    Parameters
    ----------
    lr : float
        The initial learning rate.
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    clipnorm : float, optional
        Rescale each tensor's gradient g to ``g * clipnorm / max(||g||, clipnorm)``.
    clipvalue : float, optional
        Clip each gradient element to [-clipvalue, clipvalue].
    global_clipnorm : float, optional
        Rescale all gradients together by their norm over every parameter.

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.SGD(0.1, global_clipnorm=1.0).global_clipnorm
    1.0
    """

    name = "optimizer"
    state_names: Tuple[str, ...] = ()
    # declared for the checker: set by subclasses, __init__, bind and _split
    _options: Tuple[str, ...]
    _step: Callable[..., None]
    state: Dict[str, Array]
    _params: Optional[Array]
    _parts: Any
    weight_decay = 0.0
    # decoupled_weight_decay: weight_decay shrinks the parameters, params *= 1 - lr
    # * weight_decay, before each step (Loshchilov and Hutter's decoupled decay,
    # torch.optim.AdamW's rule) instead of adding weight_decay * params to the
    # gradient. A kernel that decouples in its own pass (adam_step) sets
    # kernel_decouples; for the others the scale is one multiply over the block.
    decoupled_weight_decay = False
    kernel_decouples = False

    @property
    def couples_l2(self) -> bool:
        """Whether step(l2=...) can fold a penalty's L2 gradient into the kernel.

        Not after a decoupled decay has scaled the parameters (the gradient is the
        one at the parameters before the step).
        """
        return not (self.decoupled_weight_decay and self.weight_decay)

    def __init__(self, lr: float, schedule: Union[str, Schedule, None] = None,
                 clipnorm: Optional[float] = None, clipvalue: Optional[float] = None,
                 global_clipnorm: Optional[float] = None) -> None:
        self.lr0 = chk.real(lr, "lr", low=0, low_open=True)
        self.schedule = get_schedule(schedule)
        clip = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        given = [k for k, v in clip.items() if v is not None]
        if len(given) > 1:
            raise ValueError(f"pass at most one of clipnorm, clipvalue and global_clipnorm, got {given}")
        for k in given:
            clip[k] = chk.real(clip[k], k, low=0, low_open=True)
        self.clipnorm, self.clipvalue, self.global_clipnorm = clip.values()
        self.clips = bool(given)
        self.state = {}
        self._params = None
        self.t = 0
        self.samples_seen = 0
        self.epochs_done = 0

    def bind(self, params: Array) -> None:
        """Allocate zeroed state buffers shaped like `params` and restart the counts.

        Parameters
        ----------
        params : numpy.ndarray
            The flat parameter buffer.
        """
        self._params = params
        self.state = {name: chk.zeros(params.shape, params.dtype) for name in self.state_names}
        self._parts = None  # (key, [(param view, grad view, {name: state view}, penalised)])
        self.t = 0
        self.samples_seen = 0
        self.epochs_done = 0
        self.schedule.reset(self.lr0)

    def is_bound_to(self, params: Array) -> bool:
        """Return whether the optimizer's state belongs to the buffer `params`.

        Parameters
        ----------
        params : numpy.ndarray
            A flat parameter buffer.

        Returns
        -------
        bool
            Whether `bind` was last called with it.
        """
        return self._params is params

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return self.schedule.lr_at(self.t + 1)

    def step(self, backend: Backend, params: Array, grads: Array, n_samples: int = 0, l2: float = 0.0,
             l2_size: int = 0, runs: Optional[List[Tuple[int, int]]] = None,
             tensors: Optional[List[Array]] = None) -> None:
        """Update the flat parameter buffer in place: one kernel call over all of it.

        With `l2` or `runs`, one call per range (split where the penalised block
        ends).

        Parameters
        ----------
        backend : backend object
            The backend whose kernel runs.
        params : numpy.ndarray
            The flat parameter buffer.
        grads : numpy.ndarray
            Its gradient, same layout.
        n_samples : int, default 0
            The samples of the step (for per-sample schedules).
        l2 : float, default 0.0
            Adds the gradient ``l2 * param`` of the penalty ``l2/2 ||params[:l2_size]||^2``
            inside the kernel (only for optimizers with couples_l2).
        l2_size : int, default 0
            The length of the penalised block at the start of the buffer.
        runs : list of (int, int), optional
            The [(start, stop)] ranges to update (frozen parameters lie outside
            them; None: everything).
        tensors : list of numpy.ndarray, optional
            The flat gradient view of each tensor, for clipnorm (None: the buffer is
            one tensor).

        Raises
        ------
        ValueError
            If `l2` is given to an optimizer that cannot fold it.
        """
        if l2 and not self.couples_l2:
            raise ValueError(f"{self.name} cannot fold an L2 penalty into its step")
        lr = self._next_rate(n_samples)
        kernels = backend.fast
        if self.clips:
            self.clip(grads, tensors)
        weight_decay = self.weight_decay  # the L2 gradient term the kernel adds
        shrink = None  # decoupled decay done here: params *= shrink before the kernel
        if self.decoupled_weight_decay and not self.kernel_decouples:
            shrink = 1.0 - lr * weight_decay if weight_decay else None
            weight_decay = 0.0
        if not l2 and runs is None:
            _shrink(params, grads, self.state, shrink)
            self._step(kernels, params, grads, lr, self.state, weight_decay)
            return
        for p, g, state, penalised in self._split(params, grads, l2_size if l2 else 0, runs):
            _shrink(p, g, state, shrink)
            self._step(kernels, p, g, lr, state, weight_decay + (l2 if penalised else 0.0))

    def _next_rate(self, n_samples):
        """Count a step over n_samples; the rate it uses."""
        self.t += 1
        self.samples_seen += n_samples
        lr = self.schedule.lr_at(self.t)
        if type(lr) is not float and isinstance(lr, (int, float)):
            lr = float(lr)  # the fast precondition takes Python floats
        return lr

    def bound_step(self, backend: Backend, params: Array, grads: Array, l2_size: int = 0,
                   runs: Optional[List[Tuple[int, int]]] = None) -> Optional[Callable[..., None]]:
        """Return `step` with its kernels bound once to these arrays (``backend.fast.bind``).

        Bind after a step (t >= 1: the scalars bound must be valid).

        Parameters
        ----------
        backend : Backend
            The backend whose kernels are bound.
        params, grads : ndarray
            The flat parameter buffer and its gradient, as given to `step`.
        l2_size : int, default=0
            Length of the leading block an L2 rate applies to, as in `step`.
        runs : list of (int, int), optional
            The trainable runs of the buffer, as in `step`.

        Returns
        -------
        callable or None
            ``step(n_samples, l2=0.0)``, doing the same update as `step`, or None
            where binding does not apply (clipping, a decoupled decay done
            outside the kernel, arguments the fast precondition refuses).
        """
        if self.clips or (self.decoupled_weight_decay and not self.kernel_decouples) or self.t < 1:
            return None
        if not l2_size and runs is None:
            parts = [(params, grads, self.state, False)]
        else:
            parts = self._split(params, grads, l2_size, runs)
        lr = float(self.schedule.lr_at(self.t))
        bound = []
        for p, g, state, penalised in parts:
            binder = backend.fast.binder()
            self._step(binder, p, g, lr, state, self.weight_decay)
            kernels = binder.seal()
            if kernels is None:
                return None
            bound.append((kernels, p, g, state, penalised))

        def step(n_samples, l2=0.0):
            lr = self._next_rate(n_samples)
            for kernels, p, g, state, penalised in bound:
                self._step(kernels, p, g, lr, state, self.weight_decay + (l2 if penalised else 0.0))
        return step

    def _split(self, params, grads, k, runs):
        """[(param view, grad view, state views, penalised)] over `runs` (None: the
        whole buffer), each cut at k (the end of the penalised block). The same
        view objects every step: the kernels' fast path remembers them."""
        key = self._parts and self._parts[0]
        if not key or key[0] is not params or key[1] is not grads or key[2:] != (k, runs):
            ranges = [(0, params.size)] if runs is None else runs
            pieces = [(lo, min(hi, k), True) for lo, hi in ranges if lo < k] + \
                [(max(lo, k), hi, False) for lo, hi in ranges if hi > k]
            views = [(params[lo:hi], grads[lo:hi], {n: a[lo:hi] for n, a in self.state.items()}, penalised)
                     for lo, hi, penalised in pieces]
            self._parts = ((params, grads, k, runs), views)
        return self._parts[1]

    def clip(self, grads: Array, tensors: Optional[List[Array]] = None) -> None:
        """Clip the gradient buffer in place (see the class's clipping options).

        Parameters
        ----------
        grads : numpy.ndarray
            The flat gradient buffer.
        tensors : list of numpy.ndarray, optional
            Flat views of grads, one per tensor, for clipnorm (None: one tensor).
        """
        if self.clipvalue is not None:
            np.clip(grads, -self.clipvalue, self.clipvalue, out=grads)
            return
        limit = self.clipnorm if self.clipnorm is not None else self.global_clipnorm
        groups = [grads] if tensors is None or self.clipnorm is None else tensors
        for g in groups:
            with np.errstate(over="ignore"):
                norm = math.sqrt(float(np.dot(g, g)))
            if not math.isfinite(norm):  # a float32 sum of squares can overflow: sum in float64
                norm = math.sqrt(float(np.square(g, dtype=np.float64).sum()))
            if norm > limit:  # type: ignore[operator]
                g *= g.dtype.type(limit / norm)  # type: ignore[operator]

    def end_epoch(self, loss: Optional[float] = None) -> bool:
        """Tell the schedule an epoch ended.

        Parameters
        ----------
        loss : float, optional
            The epoch's training loss.

        Returns
        -------
        bool
            True when the schedule asks training to stop (scikit-learn's 'adaptive').
        """
        self.epochs_done += 1
        return self.schedule.end_epoch(self.epochs_done, loss, self.samples_seen)

    def get_state(self) -> Tuple[Dict[str, Any], Dict[str, Array]]:
        """Return the optimizer's state.

        Returns
        -------
        counters : dict
            The step counts and the schedule's position, JSON-able.
        buffers : dict of str to numpy.ndarray
            The state buffers by name.
        """
        counters = {"t": self.t, "samples_seen": self.samples_seen, "epochs_done": self.epochs_done,
                    "schedule": {k: v for k, v in vars(self.schedule).items()
                                 if k in ("lr0", "lr", "best", "bad_epochs")}}
        return counters, self.state

    def set_state(self, params: Array, counters: Dict[str, Any], buffers: Mapping[str, ArrayLike]) -> None:
        """Bind to `params` and restore what `get_state` returned.

        Parameters
        ----------
        params : numpy.ndarray
            The flat parameter buffer.
        counters : dict
            The counters of get_state.
        buffers : mapping of str to array_like
            The state buffers of get_state.
        """
        self.bind(params)
        for name in self.state_names:
            np.copyto(self.state[name], buffers[name])
        self.t, self.samples_seen = counters["t"], counters["samples_seen"]
        self.epochs_done = counters["epochs_done"]
        vars(self.schedule).update(counters["schedule"])

    def config(self) -> Config:
        options = {k: getattr(self, k) for k in self._options + CLIP_OPTIONS if getattr(self, k) is not None}
        return {"name": self.name, "lr": self.lr0, "schedule": self.schedule.config(), **options}

    def __repr__(self):
        options = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._options + CLIP_OPTIONS
                            if getattr(self, k) is not None)
        return f"{type(self).__name__}(lr={self.lr0!r}, {options}, schedule={self.schedule!r})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum or Nesterov (torch.optim.SGD's rule).

    Parameters
    ----------
    lr : float, default 0.01
        The initial learning rate.
    momentum : float, default 0.0
        The momentum factor.
    nesterov : bool, default False
        Whether to use Nesterov momentum.
    weight_decay : float, default 0.0
        Weight decay: the L2 gradient ``weight_decay * params``, or with
        decoupled_weight_decay ``params *= 1 - lr * weight_decay`` before the step.
    lr_in_velocity : bool, default False
        True gives scikit-learn's rule (the velocity holds ``lr * grad``), which
        differs when the rate changes over time.
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    decoupled_weight_decay : bool, default False
        Whether the weight decay is decoupled (see weight_decay).
    **clipping : float
        One of clipnorm, clipvalue and global_clipnorm (see `Optimizer`).

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.SGD(0.1, momentum=0.9, nesterov=True).name
    'sgd'
    """

    name = "sgd"
    _options = ("momentum", "nesterov", "weight_decay", "lr_in_velocity", "decoupled_weight_decay")

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, lr_in_velocity: bool = False,
                 schedule: Union[str, Schedule, None] = None, decoupled_weight_decay: bool = False,
                 **clipping: Optional[float]) -> None:
        super().__init__(lr, schedule, **clipping)
        self.momentum = chk.real(momentum, "momentum", 0, 1)
        self.nesterov = bool(nesterov)
        if self.nesterov and not self.momentum:
            raise ValueError("nesterov needs momentum > 0")
        self.weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self.lr_in_velocity = bool(lr_in_velocity)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.state_names = ("velocity",) if self.momentum else ()

    def _step(self, kernels, params, grads, lr, state, weight_decay):
        kernels.sgd_step(params, grads, state.get("velocity"), lr, momentum=self.momentum,
                         nesterov=self.nesterov, weight_decay=weight_decay,
                         lr_in_velocity=self.lr_in_velocity)


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad's rule).

    Parameters
    ----------
    lr : float, default 0.01
        The initial learning rate.
    eps : float, default 1e-10
        Added to the denominator.
    weight_decay : float, default 0.0
        Weight decay: the L2 gradient ``weight_decay * params``, or with
        decoupled_weight_decay ``params *= 1 - lr * weight_decay`` before the step.
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    decoupled_weight_decay : bool, default False
        Whether the weight decay is decoupled (see weight_decay).
    **clipping : float
        One of clipnorm, clipvalue and global_clipnorm (see `Optimizer`).

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Adagrad(0.05).state_names
    ('sum_sq',)
    """
    name = "adagrad"
    state_names = ("sum_sq",)
    _options = ("eps", "weight_decay", "decoupled_weight_decay")

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0,
                 schedule: Union[str, Schedule, None] = None, decoupled_weight_decay: bool = False,
                 **clipping: Optional[float]) -> None:
        super().__init__(lr, schedule, **clipping)
        self.eps = chk.real(eps, "eps", low=0)
        self.weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _step(self, kernels, params, grads, lr, state, weight_decay):
        kernels.adagrad_step(params, grads, state["sum_sq"], lr, eps=self.eps,
                             weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop's rule), optionally centered and with momentum.

    Parameters
    ----------
    lr : float, default 0.01
        The initial learning rate.
    alpha : float, default 0.99
        The decay of the squared-gradient average.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0.0
        Weight decay: the L2 gradient ``weight_decay * params``, or with
        decoupled_weight_decay ``params *= 1 - lr * weight_decay`` before the step.
    momentum : float, default 0.0
        The momentum factor.
    centered : bool, default False
        Whether to divide by the estimated variance instead of the second moment.
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    decoupled_weight_decay : bool, default False
        Whether the weight decay is decoupled (see weight_decay).
    **clipping : float
        One of clipnorm, clipvalue and global_clipnorm (see `Optimizer`).

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.RMSprop(1e-3, centered=True).state_names
    ('square_avg', 'grad_avg')
    """
    name = "rmsprop"
    _options = ("alpha", "eps", "weight_decay", "momentum", "centered", "decoupled_weight_decay")

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, schedule: Union[str, Schedule, None] = None,
                 decoupled_weight_decay: bool = False, **clipping: Optional[float]) -> None:
        super().__init__(lr, schedule, **clipping)
        self.alpha = chk.real(alpha, "alpha", 0, 1)
        self.eps = chk.real(eps, "eps", low=0)
        self.weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self.momentum = chk.real(momentum, "momentum", 0, 1)
        self.centered = bool(centered)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.state_names = (("square_avg",) + (("momentum_buf",) if self.momentum else ())
                            + (("grad_avg",) if self.centered else ()))

    def _step(self, kernels, params, grads, lr, state, weight_decay):
        s = state
        kernels.rmsprop_step(params, grads, s["square_avg"], lr, alpha=self.alpha, eps=self.eps,
                             weight_decay=weight_decay, momentum=self.momentum,
                             momentum_buf=s.get("momentum_buf"), centered=self.centered,
                             grad_avg=s.get("grad_avg"))


class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta's rule).

    Parameters
    ----------
    lr : float, default 1.0
        The initial learning rate.
    rho : float, default 0.9
        The decay of the running averages.
    eps : float, default 1e-6
        Added inside the square roots.
    weight_decay : float, default 0.0
        Weight decay: the L2 gradient ``weight_decay * params``, or with
        decoupled_weight_decay ``params *= 1 - lr * weight_decay`` before the step.
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    decoupled_weight_decay : bool, default False
        Whether the weight decay is decoupled (see weight_decay).
    **clipping : float
        One of clipnorm, clipvalue and global_clipnorm (see `Optimizer`).

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Adadelta().state_names
    ('square_avg', 'acc_delta')
    """
    name = "adadelta"
    state_names = ("square_avg", "acc_delta")
    _options = ("rho", "eps", "weight_decay", "decoupled_weight_decay")

    def __init__(self, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                 schedule: Union[str, Schedule, None] = None, decoupled_weight_decay: bool = False,
                 **clipping: Optional[float]) -> None:
        super().__init__(lr, schedule, **clipping)
        self.rho = chk.real(rho, "rho", 0, 1)
        self.eps = chk.real(eps, "eps", low=0, low_open=True)
        self.weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _step(self, kernels, params, grads, lr, state, weight_decay):
        kernels.adadelta_step(params, grads, state["square_avg"], state["acc_delta"], lr,
                              rho=self.rho, eps=self.eps, weight_decay=weight_decay)


class Adam(Optimizer):
    """Adam (torch.optim.Adam's rule), optionally amsgrad.

    Weight decay is an L2 gradient, or decoupled with decoupled_weight_decay=True
    (AdamW).

    Parameters
    ----------
    lr : float, default 1e-3
        The initial learning rate.
    beta1 : float, default 0.9
        The decay of the first-moment estimate.
    beta2 : float, default 0.999
        The decay of the second-moment estimate.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0.0
        Weight decay: the L2 gradient ``weight_decay * params``, or with
        decoupled_weight_decay ``params *= 1 - lr * weight_decay`` before the step.
    amsgrad : bool, default False
        Whether to use the maximum of the second-moment estimates.
    sklearn_eps : bool, default False
        True places eps as scikit-learn does (added to sqrt(v) after the bias
        correction of the rate, i.e. ``eps / sqrt(1 - beta2^t)`` here).
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    decoupled_weight_decay : bool, default False
        Whether the weight decay is decoupled (see weight_decay).
    **clipping : float
        One of clipnorm, clipvalue and global_clipnorm (see `Optimizer`).

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.Adam(3e-3, amsgrad=True).state_names
    ('m', 'v', 'v_max')
    """

    name = "adam"
    kernel_decouples = True  # adam_step(decoupled=True) scales the parameters in its own pass
    _options = ("beta1", "beta2", "eps", "weight_decay", "amsgrad", "sklearn_eps", "decoupled_weight_decay")

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, sklearn_eps: bool = False,
                 schedule: Union[str, Schedule, None] = None, decoupled_weight_decay: bool = False,
                 **clipping: Optional[float]) -> None:
        super().__init__(lr, schedule, **clipping)
        self.beta1 = chk.real(beta1, "beta1", 0, 1, high_open=True)
        self.beta2 = chk.real(beta2, "beta2", 0, 1, high_open=True)
        self.eps = chk.real(eps, "eps", low=0)
        self.weight_decay = chk.real(weight_decay, "weight_decay", low=0)
        self.amsgrad = bool(amsgrad)
        self.sklearn_eps = bool(sklearn_eps)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.state_names = ("m", "v") + (("v_max",) if self.amsgrad else ())

    @property
    def couples_l2(self) -> bool:
        """Whether step(l2=...) can fold a penalty's L2 gradient into the kernel."""
        # the kernel has one weight_decay: decoupled, it cannot also carry an L2 gradient
        return not self.decoupled_weight_decay

    def _step(self, kernels, params, grads, lr, state, weight_decay):
        eps = self.eps / math.sqrt(1 - self.beta2**self.t) if self.sklearn_eps else self.eps
        s = state
        kernels.adam_step(params, grads, s["m"], s["v"], self.t, lr, beta1=self.beta1,
                          beta2=self.beta2, eps=eps, weight_decay=weight_decay,
                          decoupled=self.decoupled_weight_decay, amsgrad=self.amsgrad, v_max=s.get("v_max"))


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW's rule).

    Adam with decoupled_weight_decay=True and weight_decay 0.01 by default.

    Parameters
    ----------
    lr : float, default 1e-3
        The initial learning rate.
    beta1 : float, default 0.9
        The decay of the first-moment estimate.
    beta2 : float, default 0.999
        The decay of the second-moment estimate.
    eps : float, default 1e-8
        Added to the denominator.
    weight_decay : float, default 0.01
        Weight decay: the L2 gradient ``weight_decay * params``, or with
        decoupled_weight_decay ``params *= 1 - lr * weight_decay`` before the step.
    amsgrad : bool, default False
        Whether to use the maximum of the second-moment estimates.
    sklearn_eps : bool, default False
        Places eps as scikit-learn does (see `Adam`).
    schedule : str, Schedule or None, default None
        The learning-rate schedule (see `get_schedule`; None: constant).
    **clipping : float
        One of clipnorm, clipvalue and global_clipnorm (see `Optimizer`).

    Raises
    ------
    ValueError
        If an option is out of range, or more than one clipping option is given.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.AdamW().weight_decay
    0.01
    """

    name = "adamw"
    _options = tuple(k for k in Adam._options if k != "decoupled_weight_decay")  # type: ignore[assignment]

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False, sklearn_eps: bool = False,
                 schedule: Union[str, Schedule, None] = None, **clipping: Optional[float]) -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay, amsgrad, sklearn_eps, schedule,
                         decoupled_weight_decay=True, **clipping)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW)}


def get_optimizer(optimizer: Union[str, Optimizer]) -> Optimizer:
    """Return an optimizer from a name (default settings) or an Optimizer.

    Parameters
    ----------
    optimizer : str or Optimizer
        A name (``'sgd'``, ``'adagrad'``, ``'rmsprop'``, ``'adadelta'``,
        ``'adam'``, ``'adamw'``) or an Optimizer (returned as it is).

    Returns
    -------
    Optimizer
        The optimizer.

    Raises
    ------
    ValueError
        If the name is unknown.
    TypeError
        If `optimizer` is neither a name nor an Optimizer.

    Examples
    --------
    >>> from fastnn import nn
    >>> nn.get_optimizer("adam").lr0
    0.001
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be an optimizer name or an Optimizer, got "
                        f"{type(optimizer).__name__}")
    return OPTIMIZERS[chk.choice(optimizer.lower(), "optimizer", OPTIMIZERS)]()


def optimizer_from_config(config):
    options = dict(config)
    cls = OPTIMIZERS[chk.choice(options.pop("name", None), "optimizer", OPTIMIZERS)]
    lr = options.pop("lr")
    schedule = schedule_from_config(options.pop("schedule"))
    return cls(lr, schedule=schedule, **options)
