"""Training history and callbacks of `Sequential.fit`."""

import math

import numpy as np

from ..backends import _checks as chk


class History(dict):
    """Per-epoch values, {'loss': [...], 'val_loss': [...], 'accuracy': [...], ...}.
    A dict; `history.history` is the same dict (Keras's spelling), `history.epoch`
    the epoch numbers (1-based)."""

    @property
    def history(self):
        return self

    @property
    def epoch(self):
        return list(range(1, len(self.get("loss", ())) + 1))

    def append(self, logs):
        for key, value in logs.items():
            self.setdefault(key, []).append(value)


class Callback:
    """Hooks called by fit. Set `model.stop_training = True` to stop after an epoch."""

    def on_train_begin(self, model, logs):
        """logs: {'validation': bool} before the first epoch."""

    def on_epoch_end(self, model, epoch, logs):
        """epoch: 1-based; logs: this epoch's values (loss, val_loss, accuracy, ...)."""

    def on_train_end(self, model, logs):
        """Called after the last epoch, also when training stopped early."""


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience`
    epochs; with restore_best, put back the parameters (and batch-norm statistics)
    of the best epoch. monitor: a key of the history, 'val_loss' by default (needs
    validation_split or validation_data); mode 'auto' maximises accuracies and
    minimises everything else."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best=True):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a string, got {type(monitor).__name__}")
        self.monitor = monitor
        self.patience = chk.integer(patience, "patience", low=0)
        self.min_delta = chk.real(min_delta, "min_delta", low=0)
        self.mode = chk.choice(mode, "mode", ("auto", "min", "max"))
        self.restore_best = bool(restore_best)

    def on_train_begin(self, model, logs):
        if self.monitor.startswith("val_") and not logs.get("validation"):
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which needs validation data: "
                             "pass validation_split or validation_data to fit")
        maximise = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        self.sign = -1.0 if maximise else 1.0  # compare sign * value, lower is better
        self.best = math.inf
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.wait = 0
        self.best_params = self.best_state = None

    def on_epoch_end(self, model, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not among the "
                             f"logged values {sorted(logs)}")
        value = self.sign * logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self._keep(model)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                model.stop_training = True

    def _keep(self, model):
        # copies into buffers allocated once per training run
        params, state = model.get_flat_params(), model.get_flat_state()
        if self.best_params is None:
            self.best_params, self.best_state = np.empty_like(params), np.empty_like(state)
        np.copyto(self.best_params, params)
        np.copyto(self.best_state, state)

    def on_train_end(self, model, logs):
        if self.restore_best and self.best_params is not None:
            model.set_flat_params(self.best_params)
            np.copyto(model.get_flat_state(), self.best_state)

    @property
    def best_value(self):
        return self.sign * self.best
