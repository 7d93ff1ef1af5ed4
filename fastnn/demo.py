"""python -m fastnn demo: one MLPClassifier trained on every backend, side by side.

The same estimator (same parameters, same random_state) is fitted on each
available fastnn backend and with scikit-learn's own MLPClassifier, on the same
standardised data; the report gives each fit's time, its speed-up over
scikit-learn and over the numpy reference backend, its test accuracy, and the
largest absolute difference between its fitted weights and the reference's.

Data problems raise ValueError with a one-line message (the command line turns
them into usage errors); everything else is left to raise.
"""

import math
import statistics
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

REFERENCE = "numpy"
SKLEARN = "sklearn"
TEST_FRACTION = 0.25
DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
NOISE = 0.05  # replicated rows: Gaussian noise of NOISE x each feature's standard deviation


# ------------------------------------------------------------------------- data
@dataclass
class Data:
    name: str
    X_train: np.ndarray  # (n_train, n_features), standardised
    y_train: np.ndarray  # (n_train,)
    X_test: np.ndarray   # (n_test, n_features), standardised with the training set's statistics
    y_test: np.ndarray   # (n_test,)
    notes: list = field(default_factory=list)


def digits():
    """scikit-learn's digits: (X (1797, 64) pixel levels 0..16, y (1797,) labels 0..9)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X, y


def load_npz(path):
    """(X, y) from an .npz archive holding arrays named X (n, features) and y (n,)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if not zipfile.is_zipfile(path):
            what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip file"
            raise ValueError(f"--data: {path} is {what}, not an .npz archive with arrays X and y")
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"--data: no such file: {path}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"--data: cannot read {path} ({one_line(exc)})") from None
    with archive:
        missing = [name for name in ("X", "y") if name not in archive.files]
        if missing:
            raise ValueError(f"--data: {path} lacks array {' and '.join(missing)} "
                             f"(it holds: {', '.join(archive.files) or 'nothing'})")
        try:
            X, y = archive["X"], archive["y"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"--data: cannot read the arrays of {path} ({one_line(exc)})") from None
    return check_arrays(X, y, path)


def check_arrays(X, y, path):
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"--data: X must be 2-D (samples, features) and not empty, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"--data: X must hold numbers, got dtype {X.dtype}")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        raise ValueError("--data: X holds NaN or infinite values")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"--data: y must be 1-D with one label per row of X ({X.shape[0]}), "
                         f"got shape {y.shape}")
    if y.dtype.kind not in "biufUS":
        raise ValueError(f"--data: y must hold class labels (integers or strings), got dtype {y.dtype}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise ValueError("--data: y holds non-integer numbers; the demo is a classifier: "
                         "y must be class labels")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"--data: y must hold at least 2 classes, got {len(classes)}")
    if counts.min() < 2:
        raise ValueError(f"--data: class {classes[counts.argmin()]!r} has a single row; a stratified "
                         "train/test split needs at least 2 per class")
    return X, y


def one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def resize(X, y, n, rng):
    """n rows from (X, y): a random subset when n is smaller; else X tiled, every
    copy after the first with Gaussian noise of NOISE x each feature's standard deviation."""
    if n <= len(X):
        rows = rng.permutation(len(X))[:n]
        return X[rows], y[rows]
    copies = math.ceil(n / len(X))
    scale = NOISE * X.std(axis=0)  # (features,)
    big = np.tile(X, (copies, 1))[:n]
    big[len(X):] += rng.standard_normal((n - len(X), X.shape[1])) * scale
    return big, np.tile(y, copies)[:n]


def prepare(X, y, name, samples=None, seed=0, dtype=np.float64):
    """Stratified train/test split (TEST_FRACTION, fixed seed), each part resized to
    its share of `samples` rows (see resize; the test rows stay apart from the
    training rows), features standardised with the training part's statistics."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    except ValueError as exc:
        raise ValueError(f"cannot split {name} into train and test stratified: {one_line(exc)}") from None
    notes = []
    if samples is not None and samples != len(X):
        n_test = max(1, round(samples * TEST_FRACTION))
        rng = np.random.default_rng(seed)
        X_train, y_train = resize(X_train, y_train, samples - n_test, rng)
        X_test, y_test = resize(X_test, y_test, n_test, rng)
        how = ("a random subset of each part" if samples < len(X) else
               f"each part tiled, the copies with Gaussian noise of {NOISE} x each feature's std")
        notes.append(f"--samples {samples}: {how}")
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"the training part of {name} holds a single class; use more --samples")
    scaler = StandardScaler().fit(X_train)
    return Data(name, scaler.transform(X_train).astype(dtype), y_train,
                scaler.transform(X_test).astype(dtype), y_test, notes)


# ---------------------------------------------------------------------- fitting
@dataclass
class Result:
    backend: str
    warmup_s: float
    times_s: list
    accuracy: float
    n_iter: int
    converged: bool
    weights: list  # coefs_ + intercepts_ of the last fit

    @property
    def median_s(self):
        return statistics.median(self.times_s)


def fit(backend, params, data):
    """(fitted estimator, seconds, converged). A ConvergenceWarning is caught and
    reported as converged=False; other warnings pass through."""
    from sklearn.exceptions import ConvergenceWarning

    if backend == SKLEARN:
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(**params)
    else:
        from fastnn.estimators import MLPClassifier

        model = MLPClassifier(**params, backend=backend, dtype=DTYPE_NAMES[data.X_train.dtype])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(data.X_train, data.y_train)
        seconds = time.perf_counter() - start
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        elif "interrupted by user" in str(w.message):
            # both estimators catch Ctrl-C and end the fit with this warning: stop the demo too
            raise KeyboardInterrupt
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return model, seconds, converged


class Progress:
    """One step per fit: a tqdm bar when tqdm is installed and stderr is a
    terminal, else a plain line per fit on stderr."""

    def __init__(self, total):
        self.total, self.done, self.bar = total, 0, None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="fit", file=sys.stderr, leave=False)
            except ImportError:
                pass

    def start(self, what):
        if self.bar is not None:
            self.bar.set_description(what)
        else:
            print(f"  [{self.done + 1}/{self.total}] {what}", file=sys.stderr, flush=True)

    def finish(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(backends, params, data, repeats):
    """{backend: Result}: one untimed warm-up fit per backend, then `repeats` timed
    fits, taken in turns across the backends so that a busy moment of the machine
    does not fall on one backend only."""
    progress = Progress(len(backends) * (1 + repeats))
    warmup, times, last = {}, {b: [] for b in backends}, {}
    try:
        for b in backends:
            progress.start(f"{b}: warm-up fit")
            _, warmup[b], _ = fit(b, params, data)
            progress.finish()
        for r in range(repeats):
            for b in backends:
                progress.start(f"{b}: timed fit {r + 1}/{repeats}")
                model, seconds, converged = fit(b, params, data)
                times[b].append(seconds)
                last[b] = (model, converged)
                progress.finish()
    finally:
        progress.close()
    results = {}
    for b in backends:
        model, converged = last[b]
        accuracy = float((model.predict(data.X_test) == data.y_test).mean())
        results[b] = Result(b, warmup[b], times[b], accuracy, model.n_iter_, converged,
                            list(model.coefs_) + list(model.intercepts_))
    return results


def max_difference(weights, reference):
    """Largest |a - b| over all entries of the weight lists (compared in float64)."""
    return max(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
               for a, b in zip(weights, reference))


# ----------------------------------------------------------------------- report
def seconds(s):
    return f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"


def table(results):
    """The report table's lines: a row per backend, the reference first."""
    ref = results[REFERENCE]
    sk = results.get(SKLEARN)
    lines = [f"  {'backend':<10}{'fit time':>10}{'warm-up':>10}{'vs sklearn':>12}{'vs numpy':>10}"
             f"{'test acc':>10}{'epochs':>8}  {'max |w - w_numpy|':>17}"]
    for name, r in results.items():
        vs_sklearn = "-" if sk is None else f"{sk.median_s / r.median_s:.2f}x"
        difference = "(reference)" if name == REFERENCE else f"{max_difference(r.weights, ref.weights):.3g}"
        epochs = f"{r.n_iter}{'' if r.converged else '*'}"
        lines.append(f"  {name:<10}{seconds(r.median_s):>10}{seconds(r.warmup_s):>10}{vs_sklearn:>12}"
                     f"{ref.median_s / r.median_s:>9.2f}x{r.accuracy:>10.4f}{epochs:>8}  {difference:>17}")
    return lines


def report(results, data, params, repeats):
    dtype = DTYPE_NAMES[data.X_train.dtype]
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    print(f"data:    {data.name}, {data.X_train.shape[1]} features, {len(np.unique(data.y_train))} classes")
    print(f"         stratified split (seed 0): {len(data.y_train)} training rows, "
          f"{len(data.y_test)} test rows; features standardised on the training rows")
    for note in data.notes:
        print(f"         {note}")
    print(f"model:   MLPClassifier({shown}), {dtype}, the same on every backend")
    print(f"timing:  median of {repeats} timed fit{'s' if repeats != 1 else ''} after one untimed warm-up "
          "fit per backend")
    print("         (Numba compiles its kernels on first use and caches them on disk: "
          "see the warm-up column)")
    print("speed-up: scikit-learn's or the numpy reference's median fit time over this backend's")
    print("max |w - w_numpy|: largest absolute difference of the fitted coefs_ and intercepts_ from the "
          "numpy reference's")
    print()
    for line in table(results):
        print(line)
    late = [name for name, r in results.items() if not r.converged]
    if late:
        print(f"\n* did not converge within max_iter={params['max_iter']} epochs: {', '.join(late)} "
              "(ConvergenceWarning silenced for this table)")


# ------------------------------------------------------------------- the CNN
# python -m fastnn demo --model cnn: the digits as 8 x 8 x 1 images, a small CNN
# (fastnn.nn) trained on every backend from one seed, and the same network in
# PyTorch (in a process of its own, see demo_torch_cnn.py) when installed.
TORCH = "torch"
CNN_DEFAULTS = {"epochs": 12, "batch_size": 32, "lr": 3e-3}


def digits_images(dtype=np.float32, seed=0):
    """The digits as (N, 8, 8, 1) images in [0, 1], split stratified (TEST_FRACTION)."""
    from sklearn.model_selection import train_test_split

    X, y = digits()
    X_train, X_test, y_train, y_test = train_test_split(
        (X / 16.0).reshape(-1, 8, 8, 1).astype(dtype), y, test_size=TEST_FRACTION, stratify=y,
        random_state=seed)
    return Data("scikit-learn's digits as 8x8x1 images (pixels / 16)", X_train, y_train, X_test,
                y_test)


def cnn_model(backend, dtype, seed, lr=CNN_DEFAULTS["lr"]):
    """conv 32@3x3 same relu, batch norm, max pool 2, conv 64@3x3 same relu, batch
    norm, max pool 2, flatten, dropout 0.2, dense 10 (softmax in the loss); Adam."""
    from fastnn import nn

    return nn.Sequential(
        [nn.Conv2D(32, 3, padding="same", activation="relu"), nn.BatchNorm(), nn.MaxPool2D(2),
         nn.Conv2D(64, 3, padding="same", activation="relu"), nn.BatchNorm(), nn.MaxPool2D(2),
         nn.Flatten(), nn.Dropout(0.2), nn.Dense(10)],
        loss="sparse_categorical_crossentropy", optimizer=nn.Adam(lr), seed=seed, backend=backend,
        dtype=dtype)


def fit_cnn(backend, data, epochs, batch_size, seed):
    """(model, seconds) of one fit of the CNN from `seed`."""
    model = cnn_model(backend, data.X_train.dtype, seed)
    start = time.perf_counter()
    model.fit(data.X_train, data.y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    return model, time.perf_counter() - start


def run_torch_cnn(data, epochs, batch_size, seed, repeats):
    """The PyTorch CNN's Result, from a process that never imports fastnn."""
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    source = (Path(__file__).parent / "demo_torch_cnn.py").read_text()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npz"
        np.savez(path, X_train=data.X_train, y_train=data.y_train, X_test=data.X_test,
                 y_test=data.y_test, epochs=epochs, batch_size=batch_size, lr=CNN_DEFAULTS["lr"],
                 seed=seed, repeats=repeats, classes=len(np.unique(data.y_train)))
        run = subprocess.run([sys.executable, "-c", source, str(path)], capture_output=True,
                             text=True, check=False)
    if run.returncode:
        raise RuntimeError(f"the PyTorch CNN failed: {one_line(run.stderr[-500:])}")
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return Result(TORCH, out["warmup"], out["times"], out["accuracy"], epochs, True, [])


def run_cnn(backends, data, epochs, batch_size, seed, repeats):
    """{name: Result}: the fastnn backends (one untimed warm-up fit, then `repeats`
    timed fits in turns), then PyTorch when named in `backends`."""
    ours = [b for b in backends if b != TORCH]
    progress = Progress(len(ours) * (1 + repeats) + (TORCH in backends))
    warmup, times, last = {}, {b: [] for b in ours}, {}
    try:
        for b in ours:
            progress.start(f"{b}: warm-up fit")
            _, warmup[b] = fit_cnn(b, data, epochs, batch_size, seed)
            progress.finish()
        for r in range(repeats):
            for b in ours:
                progress.start(f"{b}: timed fit {r + 1}/{repeats}")
                last[b], seconds = fit_cnn(b, data, epochs, batch_size, seed)
                times[b].append(seconds)
                progress.finish()
        results = {}
        for b in ours:
            model = last[b]
            accuracy = float((model.predict_classes(data.X_test) == data.y_test).mean())
            results[b] = Result(b, warmup[b], times[b], accuracy, epochs, True,
                                [model.get_flat_params().copy()])
        if TORCH in backends:  # after ours: its OpenMP threads would slow what follows
            progress.start("torch: warm-up and timed fits (a separate process)")
            results[TORCH] = run_torch_cnn(data, epochs, batch_size, seed, repeats)
            progress.finish()
    finally:
        progress.close()
    return results


def report_cnn(results, data, epochs, batch_size, repeats):
    ref = results[REFERENCE]
    dtype = DTYPE_NAMES[data.X_train.dtype]
    print(f"data:    {data.name}: {len(data.y_train)} training and {len(data.y_test)} test images, "
          "stratified split (seed 0)")
    print(f"model:   {' '.join(cnn_model.__doc__.split(';')[0].split())}; {dtype}; Adam, {epochs} epochs of "
          f"batches of {batch_size}, the same seed on every backend")
    print(f"timing:  median of {repeats} timed fit{'s' if repeats != 1 else ''} after one untimed "
          "warm-up fit; PyTorch (its own CNN, its own initialisation) in a separate process")
    print("max |w - w_numpy|: largest absolute difference of the trained parameters from the numpy "
          "reference's")
    print()
    print(f"  {'backend':<10}{'fit time':>10}{'warm-up':>10}{'vs numpy':>10}{'test acc':>10}  "
          f"{'max |w - w_numpy|':>17}")
    for name, r in results.items():
        if name == REFERENCE:
            difference = "(reference)"
        elif r.weights:
            difference = f"{max_difference(r.weights, ref.weights):.3g}"
        else:
            difference = "-"
        print(f"  {name:<10}{seconds(r.median_s):>10}{seconds(r.warmup_s):>10}"
              f"{ref.median_s / r.median_s:>9.2f}x{r.accuracy:>10.4f}  {difference:>17}")
