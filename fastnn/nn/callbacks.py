"""Training history and callbacks of `Sequential.fit`, with Keras's protocol.

`fit` gives each callback the model (`set_model`, then `self.model`) and its
parameters (`set_params`: epochs, steps per epoch, verbose), then calls
on_train_begin(logs), on_epoch_begin(epoch, logs), on_train_batch_begin(batch,
logs), on_train_batch_end(batch, logs), on_epoch_end(epoch, logs) and
on_train_end(logs). Epochs and batches are counted from 0 in the hooks, as in
Keras. The batch hooks are called only for callbacks that override them (fit
looks once per fit), so a fit without such a callback pays nothing per step.

logs: on_epoch_end gets the epoch's values by their Keras names ('loss',
'accuracy' and the other metrics, 'val_loss', 'val_<metric>' with validation
data, 'lr' the rate of the epoch's last step); on_train_batch_end gets {'loss':
the running mean of the epoch's batch losses so far}, Keras 3's convention.

Setting `self.model.stop_training = True` stops the fit: from a batch hook after
that batch (the epoch then ends as usual: validation, on_epoch_end), from an
epoch hook after that epoch.
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, Union

import numpy as np

from .._types import Logs
from ..backends import _checks as chk

if TYPE_CHECKING:  # for annotations only
    from .model import Sequential


class History(dict):
    """The per-epoch values of a fit: ``{'loss': [...], 'val_loss': [...], ...}``.

    A dict; ``history.history`` is the same dict (Keras's spelling),
    ``history.epoch`` the epoch numbers, from 0 as in Keras (the numbers the
    callbacks saw).

    Examples
    --------
    >>> from fastnn import nn
    >>> history = nn.History()
    >>> history.append({"loss": 0.5})
    >>> history.append({"loss": 0.25})
    >>> history["loss"], history.epoch
    ([0.5, 0.25], [0, 1])
    """

    model: Any  # declared for the checker: the model fit trained (set by fit)

    @property
    def history(self) -> History:
        """The history itself (Keras's spelling)."""
        return self

    @property
    def epoch(self) -> List[int]:
        """The epoch numbers, from 0."""
        return list(range(len(self.get("loss", ()))))

    def append(self, logs: Logs) -> None:
        """Add an epoch's values.

        Parameters
        ----------
        logs : dict
            ``{name: value}`` of the epoch.
        """
        for key, value in logs.items():
            self.setdefault(key, []).append(value)


class Callback:
    """Hooks called by `Sequential.fit`, with Keras's protocol.

    Subclass and override the hooks you need; ``self.model`` is the model being
    trained, ``self.params`` the fit's parameters (epochs, steps per epoch,
    verbose). Epochs and batches are counted from 0. Setting
    ``self.model.stop_training = True`` stops the fit: from a batch hook after
    that batch, from an epoch hook after that epoch.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import nn
    >>> class Losses(nn.Callback):
    ...     def on_train_begin(self, logs=None):
    ...         self.losses = []
    ...     def on_epoch_end(self, epoch, logs=None):
    ...         self.losses.append(logs["loss"])
    >>> model = nn.Sequential([nn.Dense(1)], loss="mse", seed=0)
    >>> record = Losses()
    >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=3, callbacks=[record], verbose=0)
    >>> len(record.losses)
    3
    """

    model: Any = None
    params: Any = None

    def set_model(self, model: Sequential) -> None:
        """Receive the model being trained (called by fit).

        Parameters
        ----------
        model : Sequential
            The model.
        """
        self.model = model

    def set_params(self, params: Dict[str, Any]) -> None:
        """Receive the fit's parameters (called by fit).

        Parameters
        ----------
        params : dict
            ``{'epochs': ..., 'steps': ..., 'verbose': ...}``.
        """
        self.params = params

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        """Run before the first epoch.

        Parameters
        ----------
        logs : dict, optional
            ``{'validation': whether fit has validation data}``.
        """

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        """Run after the last epoch, also when training stopped early.

        Parameters
        ----------
        logs : dict, optional
            The last epoch's values.
        """

    def on_epoch_begin(self, epoch: int, logs: Optional[Logs] = None) -> None:
        """Run at the start of an epoch.

        Parameters
        ----------
        epoch : int
            The epoch, counted from 0.
        logs : dict, optional
            Empty.
        """

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        """Run at the end of an epoch.

        Parameters
        ----------
        epoch : int
            The epoch, counted from 0.
        logs : dict, optional
            This epoch's values (loss, val_loss, accuracy, ..., lr).
        """

    def on_train_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Run before a training step.

        Parameters
        ----------
        batch : int
            The step's index in the epoch, from 0.
        logs : dict, optional
            Empty.
        """

    def on_train_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Run after a training step.

        Parameters
        ----------
        batch : int
            The step's index in the epoch, from 0.
        logs : dict, optional
            ``{'loss': the mean of the epoch's batch losses so far}``.
        """

    # Keras defines these for evaluate and predict; fastnn's evaluate and predict
    # take no callbacks, so they are never called (defined so that callbacks
    # written for Keras that call or override them work).
    def on_test_begin(self, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's evaluation hook, never called (evaluate takes no callbacks).

        Parameters
        ----------
        logs : dict, optional
            Unused.
        """
        pass

    def on_test_end(self, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's evaluation hook, never called (evaluate takes no callbacks).

        Parameters
        ----------
        logs : dict, optional
            Unused.
        """
        pass

    def on_test_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's evaluation batch hook, never called (defined for Keras's callbacks).

        Parameters
        ----------
        batch : int
            The batch.
        logs : dict, optional
            Unused.
        """
        pass

    def on_test_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's evaluation batch hook, never called (defined for Keras's callbacks).

        Parameters
        ----------
        batch : int
            The batch.
        logs : dict, optional
            Unused.
        """
        pass

    def on_predict_begin(self, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's prediction hook, never called (predict takes no callbacks).

        Parameters
        ----------
        logs : dict, optional
            Unused.
        """
        pass

    def on_predict_end(self, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's prediction hook, never called (predict takes no callbacks).

        Parameters
        ----------
        logs : dict, optional
            Unused.
        """
        pass

    def on_predict_batch_begin(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's prediction batch hook, never called (defined for Keras's callbacks).

        Parameters
        ----------
        batch : int
            The batch.
        logs : dict, optional
            Unused.
        """
        pass

    def on_predict_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        """Do nothing: Keras's prediction batch hook, never called (defined for Keras's callbacks).

        Parameters
        ----------
        batch : int
            The batch.
        logs : dict, optional
            Unused.
        """
        pass


# hook name -> the positional arguments fit passes (to check a callback's signature once)
HOOK_ARGUMENTS = {  # type: ignore[var-annotated]
    "on_train_begin": ({},), "on_train_end": ({},), "on_epoch_begin": (0, {}), "on_epoch_end": (0, {}),
    "on_train_batch_begin": (0, {}), "on_train_batch_end": (0, {}),
}


class CallbackList:
    """Callbacks called in order. `batch_hooks`: the same for those that override
    a batch hook, or None when none does, so that the training loop skips the
    batch hooks with one test per step."""

    def __init__(self, callbacks):
        self.callbacks = callbacks
        overrides = [c for c in callbacks
                     if type(c).on_train_batch_begin is not Callback.on_train_batch_begin
                     or type(c).on_train_batch_end is not Callback.on_train_batch_end]
        self.batch_hooks = None if not overrides else \
            self if len(overrides) == len(callbacks) else CallbackList(overrides)

    @classmethod
    def for_fit(cls, callbacks, model, params):
        """The callbacks of one fit, checked (a TypeError for anything but a list
        of Callback objects, or a hook that cannot take Keras's arguments) and
        given the model and params."""
        if callbacks is None:
            callbacks = []
        if not isinstance(callbacks, (list, tuple)) or not all(isinstance(c, Callback) for c in callbacks):
            raise TypeError("callbacks must be a list of fastnn.nn.callbacks.Callback instances")
        for callback in callbacks:
            check_signatures(callback)
            callback.set_model(model)
            callback.set_params(dict(params))
        return cls(list(callbacks))

    def on_train_begin(self, logs):
        for c in self.callbacks:
            c.on_train_begin(logs)

    def on_train_end(self, logs):
        for c in self.callbacks:
            c.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs):
        for c in self.callbacks:
            c.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs):
        for c in self.callbacks:
            c.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs):
        for c in self.callbacks:
            c.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs):
        for c in self.callbacks:
            c.on_train_batch_end(batch, logs)


def check_signatures(callback):
    """A TypeError now, naming the hook, when a hook the callback overrides
    cannot take the arguments fit passes (e.g. the former protocol's
    on_epoch_end(self, model, epoch, logs))."""
    for hook, args in HOOK_ARGUMENTS.items():
        method = getattr(callback, hook)
        if getattr(type(callback), hook, None) is getattr(Callback, hook):
            continue
        try:
            inspect.signature(method).bind(*args)
        except TypeError:
            expected = "(self, logs=None)" if len(args) == 1 else \
                f"(self, {'batch' if 'batch' in hook else 'epoch'}, logs=None)"
            raise TypeError(f"{type(callback).__name__}.{hook}{inspect.signature(method)} does not take "
                            f"Keras's arguments {hook}{expected}; the model is self.model (the former "
                            "protocol passed it as the first argument)") from None
        except ValueError:  # no signature (a builtin): let the call decide
            continue


# ------------------------------------------------------------ monitored values
# names of logged values where higher is better ('val_' prefix stripped)
MAXIMISED = ("acc", "auc", "precision", "recall", "f1", "r2")


def maximises(monitor, mode):
    """Whether `monitor` improves upwards: mode 'max', or 'auto' and an accuracy,
    AUC, precision, recall, F1 or R^2."""
    if mode != "auto":
        return mode == "max"
    name = monitor[4:] if monitor.startswith("val_") else monitor
    return any(part in name for part in MAXIMISED)


class _Monitor(Callback):
    """Base of the callbacks that follow one logged value (monitor)."""

    def __init__(self, monitor: str, mode: Literal["auto", "min", "max"], min_delta: float) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a string, got {type(monitor).__name__}")
        self.monitor = monitor
        self.mode = chk.choice(mode, "mode", ("auto", "min", "max"))
        self.min_delta = chk.real(min_delta, "min_delta", low=0)

    def _start(self, logs):
        if self.monitor.startswith("val_") and not (logs or {}).get("validation"):
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which needs validation "
                             "data: pass validation_split or validation_data to fit")
        self.sign = -1.0 if maximises(self.monitor, self.mode) else 1.0  # sign * value: lower is better
        self.best = math.inf

    def _value(self, logs):
        if self.monitor not in logs:
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which is not among the "
                             f"logged values {sorted(logs)}")
        return self.sign * logs[self.monitor]

    def _improves(self, value):
        """Whether sign * value beats the best by more than min_delta."""
        return value < self.best - self.min_delta

    @property
    def best_value(self) -> float:
        return self.sign * self.best


class EarlyStopping(_Monitor):
    """Stop training when `monitor` has stopped improving.

    Training stops when `monitor` has not improved by more than `min_delta` for
    `patience` epochs. ``best_epoch`` and ``stopped_epoch`` count from 0, as the
    hooks' epochs.

    Parameters
    ----------
    monitor : str, default 'val_loss'
        A logged value ('val_loss' needs validation_split or validation_data).
    patience : int, default 5
        Epochs without improvement before stopping.
    min_delta : float, default 0.0
        The least change that counts as an improvement.
    mode : {'auto', 'min', 'max'}, default 'auto'
        Whether the value improves by falling or rising; 'auto' maximises
        accuracies, AUC, precision, recall, F1 and R^2 and minimises everything
        else.
    restore_best_weights : bool, default True
        Put back the parameters (and batch-norm statistics) of the best epoch at
        the end (True by default, unlike Keras).
    restore_best : bool, optional
        The former name of restore_best_weights.

    Examples
    --------
    >>> from fastnn import nn
    >>> stop = nn.EarlyStopping(monitor="val_accuracy", patience=3)
    """

    # declared for the checker: the best epoch's parameters and state, kept from on_train_begin
    best_params: Any
    best_state: Any

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: Literal["auto", "min", "max"] = "auto", restore_best_weights: bool = True, *,
                 restore_best: Optional[bool] = None) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = chk.integer(patience, "patience", low=0)
        if restore_best is not None:
            restore_best_weights = restore_best
        self.restore_best_weights = bool(restore_best_weights)

    @property
    def restore_best(self) -> bool:
        """The former name of restore_best_weights."""
        return self.restore_best_weights

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self._start(logs)
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.wait = 0
        self.best_params = self.best_state = None

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        value = self._value(logs)
        if self._improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._keep(self.model)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True

    def _keep(self, model):
        # copies into buffers allocated once per training run
        params, state = model.get_flat_params(), model.get_flat_state()
        if self.best_params is None:
            self.best_params, self.best_state = np.empty_like(params), np.empty_like(state)
        np.copyto(self.best_params, params)
        np.copyto(self.best_state, state)

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        if self.restore_best_weights and self.best_params is not None:
            self.model.set_flat_params(self.best_params)
            np.copyto(self.model.get_flat_state(), self.best_state)


class ModelCheckpoint(_Monitor):
    """Save the model (`Sequential.save`) at the end of each epoch.

    The file is written under a temporary name in the same directory and then
    renamed over the path, so a reader never sees a half-written file and a
    failed write leaves the previous one.

    Parameters
    ----------
    filepath : str or path-like
        The file; may hold ``{epoch}`` (counted from 1, as Keras names its files)
        and logged values (``{val_loss:.3f}``).
    monitor : str, default 'val_loss'
        A logged value ('val_loss' needs validation_split or validation_data).
    save_best_only : bool, default False
        Save only when `monitor` improved on the best so far.
    mode : {'auto', 'min', 'max'}, default 'auto'
        Whether the value improves by falling or rising; 'auto' maximises
        accuracies, AUC, precision, recall, F1 and R^2 and minimises everything
        else.
    verbose : {0, 1}, default 0
        1 prints a line per save.

    Examples
    --------
    >>> from fastnn import nn
    >>> checkpoint = nn.ModelCheckpoint("model-{epoch:02d}.npz", monitor="loss", save_best_only=True)
    """

    def __init__(self, filepath: Union[str, os.PathLike[str]], monitor: str = "val_loss",
                 save_best_only: bool = False, mode: Literal["auto", "min", "max"] = "auto",
                 verbose: int = 0) -> None:
        super().__init__(monitor, mode, 0.0)
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"filepath must be a path, got {type(filepath).__name__}")
        self.filepath = os.fspath(filepath)
        self.save_best_only = bool(save_best_only)
        self.verbose = chk.choice(verbose, "verbose", (0, 1))

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        if self.save_best_only:
            self._start(logs)

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        if self.save_best_only:
            value = self._value(logs)
            if not self._improves(value):
                return
            self.best = value
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)  # type: ignore[arg-type]
        except KeyError as exc:
            raise ValueError(f"ModelCheckpoint's filepath {self.filepath!r} names {exc}, which is not among "
                             f"the logged values {sorted(logs)}") from None  # type: ignore[arg-type]
        save_atomically(self.model, path)
        if self.verbose:
            print(f"epoch {epoch + 1}: saved the model to {path}", flush=True)


def save_atomically(model, path):
    """model.save to a temporary file beside `path`, then os.replace onto it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            model.save(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file.

    A header 'epoch' and the logged names in sorted order (as Keras), then one
    row per epoch (epochs from 0). The file is flushed after every row.

    Parameters
    ----------
    filename : str or path-like
        The file.
    separator : str, default ','
        One character between the values.
    append : bool, default False
        Add to an existing file (its header is kept) instead of overwriting it.

    Examples
    --------
    >>> from fastnn import nn
    >>> logger = nn.CSVLogger("training.csv")
    """

    # declared for the checker: the logged names and the open file, from on_train_begin on
    keys: Any
    _file: Any

    def __init__(self, filename: Union[str, os.PathLike[str]], separator: str = ",",
                 append: bool = False) -> None:
        if not isinstance(filename, (str, os.PathLike)):
            raise TypeError(f"filename must be a path, got {type(filename).__name__}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.filename, self.separator, self.append = os.fspath(filename), separator, bool(append)
        self.keys = self._file = None

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        has_rows = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file, delimiter=self.separator)
        self._header_written = has_rows
        self.keys = None

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        if self.keys is None:
            self.keys = sorted(logs)  # type: ignore[arg-type]
        if not self._header_written:
            self._writer.writerow(["epoch"] + self.keys)
            self._header_written = True
        self._writer.writerow([epoch] + [logs.get(k, "NA") for k in self.keys])
        self._file.flush()

    def on_train_end(self, logs: Optional[Logs] = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def set_learning_rate(optimizer, lr):
    """Make `lr` the optimizer's learning rate from its next step on. Only an
    optimizer with a constant schedule has a rate to set: a schedule (StepDecay,
    InverseScaling...) would overwrite or ignore it, so it is refused."""
    from .optimizers import Schedule

    if type(optimizer.schedule) is not Schedule:
        raise ValueError(f"the optimizer's learning rate follows its schedule {optimizer.schedule!r}; "
                         "a callback that sets the rate needs an optimizer without a schedule")
    lr = chk.real(lr, "learning rate", low=0, low_open=True)
    optimizer.schedule.lr = float(lr)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)``.

    The rate reaches the optimizer's steps: it replaces the rate of its
    (constant) schedule, which saving keeps.

    Parameters
    ----------
    schedule : callable
        ``schedule(epoch, lr) -> float``, epoch from 0, lr the current rate.
    verbose : {0, 1}, default 0
        1 prints the rate of each epoch.

    Examples
    --------
    >>> from fastnn import nn
    >>> halving = nn.LearningRateScheduler(lambda epoch, lr: lr / 2 if epoch else lr)
    """

    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = chk.choice(verbose, "verbose", (0, 1))

    def on_epoch_begin(self, epoch: int, logs: Optional[Logs] = None) -> None:
        optimizer = self.model.optimizer
        lr = self.schedule(epoch, optimizer.lr)
        set_learning_rate(optimizer, lr)
        if self.verbose:
            print(f"epoch {epoch + 1}: learning rate {optimizer.lr}", flush=True)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when `monitor` has stopped improving.

    The rate falls when `monitor` has not improved by more than `min_delta` for
    `patience` epochs; then the callback waits `cooldown` epochs before counting
    again; never below `min_lr` (Keras's rule). Needs an optimizer without a
    schedule.

    Parameters
    ----------
    monitor : str, default 'val_loss'
        A logged value ('val_loss' needs validation_split or validation_data).
    factor : float, default 0.1
        The factor, in (0, 1).
    patience : int, default 10
        Epochs without improvement before a reduction.
    min_delta : float, default 1e-4
        The least change that counts as an improvement.
    cooldown : int, default 0
        Epochs to wait after a reduction.
    min_lr : float, default 0.0
        The smallest rate.
    mode : {'auto', 'min', 'max'}, default 'auto'
        Whether the value improves by falling or rising; 'auto' maximises
        accuracies, AUC, precision, recall, F1 and R^2 and minimises everything
        else.
    verbose : {0, 1}, default 0
        1 prints each reduction.

    Examples
    --------
    >>> from fastnn import nn
    >>> reduce = nn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: Literal["auto", "min", "max"] = "auto", verbose: int = 0) -> None:
        super().__init__(monitor, mode, min_delta)
        self.factor = chk.real(factor, "factor", 0, 1, low_open=True, high_open=True)
        self.patience = chk.integer(patience, "patience", low=0)
        self.cooldown = chk.integer(cooldown, "cooldown", low=0)
        self.min_lr = chk.real(min_lr, "min_lr", low=0)
        self.verbose = chk.choice(verbose, "verbose", (0, 1))

    def on_train_begin(self, logs: Optional[Logs] = None) -> None:
        self._start(logs)
        self.wait = self.cooldown_counter = 0

    def on_epoch_end(self, epoch: int, logs: Optional[Logs] = None) -> None:
        value = self._value(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            optimizer = self.model.optimizer
            if self.wait >= self.patience and optimizer.lr > self.min_lr:
                set_learning_rate(optimizer, max(optimizer.lr * self.factor, self.min_lr))
                self.cooldown_counter, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"epoch {epoch + 1}: learning rate reduced to {optimizer.lr}", flush=True)


class TerminateOnNaN(Callback):
    """Stop training when a batch loss is NaN or infinite, instead of raising.

    fit itself never applies a step whose loss is not finite: it raises
    TrainingDivergedError (the parameters kept finite, see `Sequential.fit`).
    With this callback, that batch's loss reaches on_train_batch_end, the
    callback sets model.stop_training, and fit returns the history of the
    completed epochs instead of raising; the model keeps the parameters the
    error describes.

    Examples
    --------
    >>> from fastnn import nn
    >>> callbacks = [nn.TerminateOnNaN()]
    """

    def on_train_batch_end(self, batch: int, logs: Optional[Logs] = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"batch {batch}: invalid loss {loss}, terminating training", flush=True)
            self.model.stop_training = True


__all__ = ["CSVLogger", "Callback", "EarlyStopping", "History", "LearningRateScheduler", "ModelCheckpoint",
           "ReduceLROnPlateau", "TerminateOnNaN"]
