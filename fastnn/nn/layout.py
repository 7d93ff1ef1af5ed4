"""The flat buffers of a model: where each layer's tensors live.

All trained parameters of a model live in one contiguous buffer and their
gradients in a second one of the same layout; running statistics and other
non-trained state in a third. Each layer receives views into them. The layout
groups tensors by role (`layers.ROLES`: every weight first, then every bias,
every scale, every shift), each group in layer order, so

- the weights form one leading block, where a global L1/L2 penalty is one
  kernel call (or is folded into the optimizer step);
- a stack of Dense layers is packed as scikit-learn packs an MLP (all coefs_,
  then all intercepts_), so the estimators expose their fitted attributes as
  views of the model's buffer;
- the optimizer step is one kernel call over the whole buffer (with frozen
  layers, one per run of trainable tensors: `Sequential._refresh_trainable`).

A container layer (`Residual`) lists its sub-layers' tensors as its own, named
"<position>/<name>" ("0/W", "projection/b"), so they take their places by role
like any other layer's.

Format 1 of the save files grouped weights first and then every other
parameter in layer order (`V1_ORDER`); `permutation` maps such a buffer onto
today's layout.
"""

import math
from typing import NamedTuple

import numpy as np

from .layers import ROLES


class Slot(NamedTuple):
    """One tensor of the layout: the layer's index and its tensor's name, shape,
    role, offset (in elements) in the flat buffer, and rank (its position in the
    list of specs the layout was made from: layer order, then each layer's own)."""

    layer: int
    name: str
    shape: tuple
    role: str
    offset: int
    rank: int

    @property
    def size(self):
        return math.prod(self.shape)


def role_order(slot):
    return ROLES.index(slot[3])


def v1_order(slot):
    return slot[3] != "weight"


def lay_out(specs, order=role_order):
    """[(layer index, name, shape, role)] -> [Slot], sorted by `order` (stable:
    layer order inside a group), with their offsets."""
    slots, offset = [], 0
    ranked = sorted(((*spec, rank) for rank, spec in enumerate(specs)), key=order)
    for layer, name, shape, role, rank in ranked:
        slots.append(Slot(layer, name, tuple(shape), role, offset, rank))
        offset += math.prod(shape)
    return slots


def views(buffer, slots, n_layers):
    """[{name: view of buffer}] per layer."""
    result = [{} for _ in range(n_layers)]  # type: ignore[var-annotated]
    for s in slots:
        result[s.layer][s.name] = buffer[s.offset:s.offset + s.size].reshape(s.shape)
    return result


def permutation(slots, order):
    """Index array p with new_buffer = old_buffer[p], where old_buffer was laid out
    by `order` and new_buffer follows `slots`."""
    specs = [s[:4] for s in sorted(slots, key=lambda s: s.rank)]
    old = {(s.layer, s.name): s for s in lay_out(specs, order)}
    p = np.empty(sum(s.size for s in slots), np.intp)
    for s in slots:
        o = old[(s.layer, s.name)]
        p[s.offset:s.offset + s.size] = np.arange(o.offset, o.offset + o.size)
    return p
