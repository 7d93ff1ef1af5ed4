"""The peer baselines: the work of a benchmark done by another library
(PyTorch, scikit-learn), for comparison. Each takes the arrays of the
benchmark's setup (workloads.py) and returns a zero-argument callable doing the
work once; it raises ImportError when its library is not installed. A
`Benchmark` names them in its `others`.

This module, like the timing.py and workloads.py it builds on, never imports
fastnn: PyTorch is to be timed in a process that has not imported fastnn
(issue 24), and these three modules can be loaded there as a package of their
own, without fastnn/__init__.py.
"""

from .workloads import CNN_BATCH, CONVNET, LENET, MLP_PARAMS, NET_BATCH, NET_UNITS, SMALL_PARAMS, fit_quietly


def _torch():
    import torch  # ImportError when PyTorch is not installed

    return torch


def _tensors(arrays, *names):
    torch = _torch()
    return [torch.from_numpy(arrays[name]) for name in names]


# softmax cross-entropy, integer labels, forward + backward
def softmax_ce_torch(a):
    torch = _torch()
    logits, labels = _tensors(a, "logits", "labels")
    logits.requires_grad_(True)

    def step():
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return torch.autograd.grad(loss, logits)

    return step


# batch norm in training, forward + backward
def batchnorm_torch(a):
    torch = _torch()
    x, dy = _tensors(a, "x", "dy")
    x.requires_grad_(True)
    bn = torch.nn.BatchNorm1d(x.shape[1], dtype=x.dtype)
    bn.train()
    inputs = (x, bn.weight, bn.bias)
    return lambda: torch.autograd.grad(bn(x), inputs, dy)


# optimizer steps over one flat parameter buffer
def _torch_optimizer(cls, param, grad, **options):
    """The step of a torch optimizer over one parameter: its fused implementation
    when this build has one for the CPU (tried on a scratch parameter), else foreach."""
    torch = _torch()
    try:
        scratch = torch.nn.Parameter(torch.zeros(2, dtype=param.dtype))
        scratch.grad = torch.ones(2, dtype=param.dtype)
        cls([scratch], fused=True, **options).step()
        mode = {"fused": True}
    except (RuntimeError, TypeError, ValueError):
        mode = {"foreach": True}
    p = torch.nn.Parameter(param)
    p.grad = grad
    return cls([p], **mode, **options).step


def adam_torch(a):
    torch = _torch()
    param, grad = _tensors(a, "param", "grad")
    return _torch_optimizer(torch.optim.Adam, param, grad, lr=1e-3)


def sgd_torch(a):
    torch = _torch()
    param, grad = _tensors(a, "param", "grad")
    return _torch_optimizer(torch.optim.SGD, param, grad, lr=1e-3, momentum=0.9)


# dense layer with ReLU, forward + backward
def dense_torch(a):
    torch = _torch()
    x, W, b, dy = _tensors(a, "x", "W", "b", "dy")
    x.requires_grad_(True)
    weight = torch.nn.Parameter(W.T.contiguous())  # torch stores (out, in)
    bias = torch.nn.Parameter(b.clone())
    inputs = (x, weight, bias)

    def step():
        y = torch.relu(torch.nn.functional.linear(x, weight, bias))
        return torch.autograd.grad(y, inputs, dy)

    return step


# elementwise kernels on a flat array
def gelu_torch(a):
    torch = _torch()
    (x,) = _tensors(a, "x")
    return lambda: torch.nn.functional.gelu(x)


def tanh_torch(a):
    torch = _torch()
    x, out = _tensors(a, "x", "out")
    return lambda: torch.tanh(x, out=out)


def dropout_torch(a):
    torch = _torch()
    (x,) = _tensors(a, "x")
    return lambda: torch.nn.functional.dropout(x, 0.5, training=True)


# end to end: one training epoch of the network of workloads.py
def nn_epoch_torch(a):
    torch = _torch()
    torch.manual_seed(0)
    X, y = torch.from_numpy(a["X"]), torch.from_numpy(a["y"])
    layers = []
    for k, (i, o) in enumerate(zip(NET_UNITS[:-1], NET_UNITS[1:])):
        layers += [torch.nn.Linear(i, o)] + ([torch.nn.ReLU()] if k < len(NET_UNITS) - 2 else [])
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        order = torch.randperm(X.shape[0])
        for lo in range(0, X.shape[0], NET_BATCH):
            idx = order[lo:lo + NET_BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            optimizer.step()

    return epoch


# end to end: one training epoch of a CNN of workloads.py (channels-first in PyTorch)
def cnn_epoch_torch(layers):
    def make(a):
        torch = _torch()
        torch.manual_seed(0)
        X = torch.from_numpy(a["X"].transpose(0, 3, 1, 2).copy())
        y = torch.from_numpy(a["y"])
        modules, channels, dense = [], X.shape[1], [layer for layer in layers if layer[0] == "dense"]
        for layer in layers:
            if layer[0] == "conv":
                _, filters, k, pad = layer
                modules += [torch.nn.Conv2d(channels, filters, k, padding=pad), torch.nn.ReLU()]
                channels = filters
            elif layer[0] == "pool":
                modules.append(torch.nn.MaxPool2d(layer[1]))
            else:
                if layer is dense[0]:
                    modules.append(torch.nn.Flatten())
                modules.append(torch.nn.LazyLinear(layer[1]))
                if layer is not dense[-1]:
                    modules.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*modules).to(X.dtype)
        model(X[:2])  # the lazy layers' shapes
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()

        def epoch():
            order = torch.randperm(X.shape[0])
            for lo in range(0, X.shape[0], CNN_BATCH):
                idx = order[lo:lo + CNN_BATCH]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(X[idx]), y[idx]).backward()
                optimizer.step()

        epoch.model = model
        return epoch

    return make


lenet_epoch_torch = cnn_epoch_torch(LENET)
convnet_epoch_torch = cnn_epoch_torch(CONVNET)


def mlp_epoch_sklearn(hidden):
    """make(arrays): one epoch (partial_fit) of scikit-learn's MLPClassifier with
    `hidden` (cases.mlp_epoch_call's), after a first one here. Its validation of
    the arguments comes with each call: scikit-learn has no public epoch
    without it (fastnn's epoch is timed without, cases.EstimatorEpoch)."""
    def make(a):
        import numpy as np
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(hidden_layer_sizes=hidden, **SMALL_PARAMS)
        model.partial_fit(a["X"], a["y"], classes=np.unique(a["y"]))
        return lambda: model.partial_fit(a["X"], a["y"])

    return make


def mlp_fit_sklearn(a):
    from sklearn.neural_network import MLPClassifier

    return lambda: fit_quietly(MLPClassifier(**MLP_PARAMS), a["X"], a["y"])
