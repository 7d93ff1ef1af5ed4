"""The digits CNN of `python -m fastnn demo --model cnn` in PyTorch, for the
demo's table. Run as a program in a process of its own (its source through
``python -c``), which never imports fastnn, as a PyTorch user's process.

argv[1]: an .npz archive with X_train, y_train, X_test, y_test (channels-last
images), epochs, batch_size, lr, seed, repeats. Prints one JSON line:
{"times": [seconds of each timed fit], "warmup": seconds, "accuracy": of the
last fit}.
"""

import importlib
import json
import sys
import time
from typing import Any

import numpy as np

# the module imports anywhere; it runs as a program only where PyTorch is installed
# (imported by name, so that type checking does not depend on whether it is)
torch: Any
try:
    torch = importlib.import_module("torch")
except ImportError:
    torch = None


def model(channels, classes):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.LazyLinear(classes))


def fit(a):
    torch.manual_seed(int(a["seed"]))
    X = torch.from_numpy(np.ascontiguousarray(a["X_train"].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(a["y_train"].astype(np.int64))
    net = model(X.shape[1], int(a["classes"]))
    net(X[:2].float())  # the lazy layer's shape
    net.to(X.dtype)
    opt = torch.optim.Adam(net.parameters(), lr=float(a["lr"]))
    batch = int(a["batch_size"])
    start = time.perf_counter()
    for _ in range(int(a["epochs"])):
        net.train()
        order = torch.randperm(len(X))
        for i in range(0, len(X), batch):
            rows = order[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(X[rows]), y[rows]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        X_test = torch.from_numpy(np.ascontiguousarray(a["X_test"].transpose(0, 3, 1, 2)))
        predicted = net(X_test).argmax(1).numpy()
    return seconds, float((predicted == a["y_test"]).mean())


def main(path):
    with np.load(path) as archive:
        a = {k: archive[k] for k in archive.files}
    warmup, _ = fit(a)
    runs = [fit(a) for _ in range(int(a["repeats"]))]
    print(json.dumps({"warmup": warmup, "times": [s for s, _ in runs], "accuracy": runs[-1][1]}))


if __name__ == "__main__":
    main(sys.argv[1])
