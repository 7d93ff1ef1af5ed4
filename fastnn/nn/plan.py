"""A training step bound once per batch shape: `StepPlan`.

A step of `Sequential` walks its layers, looks up workspaces, calls each kernel
through its fast precondition (backend.fast) and the optimizer through its step
options: a few microseconds of Python per call, which on a small network (a
(200, 54) batch, 100 hidden units) is as long as the GEMMs. After a step has run
at a batch shape, the model binds that step: every kernel it calls is bound to
its arrays once (backend.fast.bind: the fast precondition checked at bind time,
the free scalars such as the step count and rate checked at each call), and the
next steps at that shape call the bound kernels in order. The arithmetic and its
order are the step's own, so the results are the same bit for bit.

A plan holds the arrays it was bound to: the batch buffers (x, targets, weights),
the workspaces, the parameter and optimizer buffers. It is used only while they
are the very objects of the step (`fits`); anything else (another backend, a
recompiled model, a re-bound optimizer, changed penalties or frozen layers, see
Sequential._plan_key) makes the model step without it and bind again. At the
end of a fit a plan is kept when its batch arrays are the model's own buffers
(`holds_only_buffers`: shuffled or partial batches are gathered into them), so
that partial_fit, epoch after epoch, does not bind again; one bound to a
caller's arrays (the whole data as one batch) is dropped.
"""

import math

import numpy as np

from .losses import Loss
from .training import NonFiniteLoss


class StepPlan:
    """One training step over fixed buffers (see the module docstring): run(),
    the whole step; loss() and step(n_samples, l2), two of its parts."""

    def __init__(self, key, forward, loss, backward, penalties, step, folded=None):
        self.key = key  # (backend, x, t, w, optimizer state, model's plan key)
        self._forward = forward
        self._loss, self._backward = loss, backward
        self._penalties = penalties  # [(bound weight_penalty, l2, l1)]
        self.step = step
        self._folded = folded  # (weights view, l2) of the L2 term the optimizer step adds, or None

    def fits(self, backend, x, t, w, state, model_key):
        k = self.key
        return (k[0] is backend and k[1] is x and k[2] is t and k[3] is w and k[4] is state
                and k[5] == model_key)

    def holds_only_buffers(self, own):
        """Whether the batch arrays bound (x, targets, weights) are the buffers
        `own` (its workspace's) holds, the model's own copies of gathered rows,
        not arrays of a caller: then the plan may outlive the fit that bound it
        (the next fit or partial_fit at that batch shape steps through it) without
        keeping a caller's data alive."""
        x, t, w = self.key[1:4]
        return x is own.get("X") and t is own.get("t") and (w is None or w is own.get("w"))

    def loss(self):
        return self._loss()

    def run(self, rows, scale):
        """One training step of `rows` samples, the penalties times `scale`: the
        parts of Sequential._loss_and_grads and _optimizer_step in their order,
        each by its bound kernels, in one call (each call between them is a few
        us of Python with the caches cold after the kernels). Returns the loss,
        penalties included; raises NonFiniteLoss before the update when it is
        not finite."""
        for run in self._forward:
            run()
        folded = self._folded
        if folded is not None:
            # right after the forward pass, which has just read the weights, so they
            # are still in cache; the value only (the optimizer adds the gradient)
            weights, l2 = folded
            penalty = 0.5 * l2 * scale * float(np.dot(weights, weights))
        loss = self._loss()
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        for run in self._backward:
            run()
        if folded is None:
            penalty = 0.0  # summed apart, then added: the walked step's order of additions
            for run, l2, l1 in self._penalties:
                penalty += run(l2=l2 * scale, l1=l1 * scale)
        loss += penalty
        if not math.isfinite(loss):
            raise NonFiniteLoss(loss)
        self.step(rows, folded[1] * scale if folded is not None else 0.0)
        return loss


def bind_step(model, backend, x, t, w, ws):
    """The StepPlan of `model` for batch (x, t, w) and workspace `ws`, bound right
    after a step on them ran (its workspaces hold that step's values), or None
    when some part of the step cannot be bound."""
    layer_ws, own = ws
    forward = []
    y = x
    for layer, lws in zip(model.layers, layer_ws):
        bound = layer.bind_forward(backend, y, lws)
        if bound is None:
            return None
        y, run = bound
        forward.append(run)
    out, grad = own["out"], own["dout"]
    if out is not y:
        return None
    loss = model.loss
    if type(loss).kernel is Loss.kernel:  # a loss defining __call__ only
        return None
    # runs the loss kernel once more on this step's outputs (it writes only grad,
    # with the same values) to learn which kernel it calls
    binder = backend.fast.binder(run=True)
    loss.kernel(binder, out, t, w, grad)
    kernels = binder.seal()
    if kernels is None:
        return None

    def loss_value():
        return loss.kernel(kernels, out, t, w, grad)
    backward = []
    dy = grad
    first = model._first_trained
    for i in range(len(model.layers) - 1, first - 1, -1):
        bound = model.layers[i].bind_backward(backend, dy, layer_ws[i], i > first)
        if bound is None:
            return None
        dy, run = bound
        backward.append(run)
    penalties = []
    if not model._fold_l2:
        for param, g, l2, l1 in model._penalties:
            run = backend.fast.bind("weight_penalty", param, g, float(l2), float(l1))
            if run is None:
                return None
            penalties.append((run, l2, l1))
    fold = model._fold_l2
    step = model.optimizer.bound_step(backend, model._params, model._grads,
                                      model.n_weights if fold else 0, model._runs)
    if step is None:
        return None
    key = (backend, x, t, w, model.optimizer.state, model._plan_key)
    folded = (model._penalties[0][0], model._penalties[0][2]) if fold else None
    return StepPlan(key, forward, loss_value, backward, penalties, step, folded)
