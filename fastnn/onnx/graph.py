"""An ONNX graph built node by node.

`Graph` collects nodes and initialisers for `to_onnx`; `ContainerGraph` writes
them into a skl2onnx container instead, so the same layer converters serve both.
A graph computes in one float dtype (`dtype`): every float constant is stored in
it. Names are readable and unique: `g.prefix` (the layer being converted, e.g.
'dense_0') is put before each name.
"""

from contextlib import contextmanager

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def tensor_type(dtype):
    """The ONNX element type of a NumPy dtype (TensorProto.FLOAT, DOUBLE, ...)."""
    dtype = np.dtype(dtype)
    return TensorProto.STRING if dtype.kind in "OSU" else helper.np_dtype_to_tensor_dtype(dtype)


class Graph:
    """Nodes and initialisers of one graph computing in `dtype` (float32 or
    float64) at ONNX operator set `opset`."""

    def __init__(self, dtype, opset):
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.prefix = ""
        self.nodes, self.initializers = [], []
        self._names = set()
        self._scalars = {}
        self._body = None  # the nodes of the subgraph being built, if one is (see subgraph)

    # ------------------------------------------------------------ naming
    def unique(self, hint):
        """A name not used yet in this graph: prefix/hint, with a number if needed."""
        base = f"{self.prefix}/{hint}" if self.prefix else hint
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def reserve(self, name):
        """Mark an exact name (a graph input or output) as taken."""
        self._names.add(name)
        return name

    # ----------------------------------------------------------- contents
    def const(self, value, hint="const"):
        """An initialiser holding `value`: floats in the graph's dtype, integers as
        int64, strings as strings. Returns its name."""
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(self.dtype)
        elif value.dtype.kind in "biu":
            value = value.astype(np.int64)
        elif value.dtype.kind not in "OSU":
            raise TypeError(f"cannot store a constant of dtype {value.dtype}")
        name = self.unique(hint)
        self._add_initializer(name, value)
        return name

    def scalar(self, value):
        """A 0-d float constant of the graph's dtype, shared by every node using it."""
        key = (self.dtype.name, float(value))
        if key not in self._scalars:
            prefix, self.prefix = self.prefix, ""
            self._scalars[key] = self.const(np.array(key[1]), f"scalar_{key[1]:g}")
            self.prefix = prefix
        return self._scalars[key]

    @contextmanager
    def computing_in(self, dtype):
        """Within: float constants (const, scalar) are of `dtype`, for a part of the
        graph computed in another dtype than the rest."""
        outer, self.dtype = self.dtype, np.dtype(dtype)
        try:
            yield self
        finally:
            self.dtype = outer

    def op(self, op_type, *inputs, out=None, domain="", **attrs):
        """Add one node with a single output; returns the output's name (`out` if
        given, else a new name from the operator's)."""
        out = self.unique(op_type.lower()) if out is None else out
        self.node(op_type, list(inputs), [out], domain, **attrs)
        return out

    def node(self, op_type, inputs, outputs, domain="", **attrs):
        """Add one node with these input and output names (several outputs: Scan's);
        into the subgraph being built if there is one."""
        if self._body is not None:
            self._body.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], domain=domain,
                                               **attrs))
        else:
            self._add_node(op_type, inputs, outputs, domain, attrs)

    def subgraph(self, hint, inputs, build):
        """A graph for an operator's attribute (Scan's body): its inputs are named
        after `inputs`, (hint, shape) pairs, tensors of the graph's dtype; `build(*
        input names)` adds its nodes with `op` and returns its outputs' names (of the
        graph's dtype). The nodes may read this graph's tensors and initialisers
        (they are in the subgraph's outer scope); names stay unique across both."""
        names = [self.unique(name) for name, _ in inputs]
        outer, self._body = self._body, []
        try:
            outputs = build(*names)
            nodes = self._body
        finally:
            self._body = outer
        elem = tensor_type(self.dtype)
        return helper.make_graph(nodes, self.unique(hint),
                                 [helper.make_tensor_value_info(n, elem, shape)
                                  for n, (_, shape) in zip(names, inputs)],
                                 [helper.make_tensor_value_info(n, elem, None) for n in outputs])

    def cast(self, x, dtype, out=None):
        """x as `dtype`."""
        return self.op("Cast", x, out=out, to=tensor_type(dtype))

    def _add_initializer(self, name, value):
        if value.dtype.kind in "OSU":
            strings = [str(s).encode("utf-8") for s in value.ravel()]
            tensor = helper.make_tensor(name, TensorProto.STRING, value.shape, strings)  # type: ignore[arg-type]
        else:
            tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.initializers.append(tensor)

    def _add_node(self, op_type, inputs, outputs, domain, attrs):
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], domain=domain, **attrs))


class ContainerGraph(Graph):
    """A Graph writing into skl2onnx's container, with names from its scope."""

    def __init__(self, dtype, scope, container):
        super().__init__(dtype, container.target_opset)
        self.scope, self.container = scope, container

    def unique(self, hint):
        base = f"{self.prefix}_{hint}" if self.prefix else hint
        return self.scope.get_unique_variable_name(base.replace("/", "_"))

    def reserve(self, name):
        return name

    def _add_initializer(self, name, value):
        if value.dtype.kind in "OSU":
            content = [str(s).encode("utf-8") for s in value.ravel()]
        else:
            content = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.container.add_initializer(name, tensor_type(value.dtype), list(value.shape), content)

    def _add_node(self, op_type, inputs, outputs, domain, attrs):
        self.container.add_node(op_type, inputs, outputs, op_domain=domain,
                                name=self.scope.get_unique_operator_name(op_type), **attrs)
