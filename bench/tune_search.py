"""fastnn.tune on digits: search quality and throughput (a script, not a test).

    python bench/tune_search.py quality [--seeds 10] [--trials 12]
        Bayesian optimisation (Optuna TPE) against random search with the same
        budget, over seeds: how often each finds the better configuration.
    python bench/tune_search.py speed [--trials 8]
        Trials per minute: RandomSearch in this process, with executor='processes'
        for n_jobs 1 and 2 (threads per worker: cores // n_jobs), Optuna alone
        driving the same training loop, and scikit-learn's RandomizedSearchCV
        over fastnn.MLPClassifier.

The search space of `quality`: a log-uniform learning rate over five decades
(only about one decade of it trains well in 3 epochs), the width and the
batch size; a sampler that learns where the good rates are should beat
independent draws.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastnn import nn, tune  # noqa: E402

X_ALL, Y_ALL = load_digits(return_X_y=True)
X_ALL = (X_ALL / 16.0).astype(np.float32)
X, Y = X_ALL[:1000], Y_ALL[:1000]
VAL = (X_ALL[1000:], Y_ALL[1000:])
EPOCHS = 3


def build_model(hp):
    return nn.Sequential([nn.Dense(hp.Int("units", 8, 128, sampling="log"), "relu"), nn.Dense(10)],
                         loss="sparse_categorical_crossentropy",
                         optimizer=nn.SGD(hp.Float("lr", 1e-5, 1.0, sampling="log"), momentum=0.9), seed=0)


def quality(seeds, trials):
    wins = ties = 0
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for seed in range(seeds):
            best = {}
            for cls, kw in ((tune.RandomSearch, {}), (tune.BayesianOptimization, {"num_initial_points": 4})):
                tuner = cls(build_model, max_trials=trials, seed=seed, directory=d,
                            project_name=f"{cls.kind}{seed}", **kw)
                tuner.search(X, Y, epochs=EPOCHS, validation_data=VAL)
                best[cls.kind] = tuner.get_best_trials()[0].score
            rows.append((seed, best["random"], best["bayesian"]))
            wins += best["bayesian"] > best["random"]
            ties += best["bayesian"] == best["random"]
            print(f"seed {seed}: random {best['random']:.4f}  bayesian {best['bayesian']:.4f}", flush=True)
    r, b = np.array([row[1] for row in rows]), np.array([row[2] for row in rows])
    print(f"{trials} trials of {EPOCHS} epochs each, {seeds} seeds: Bayesian better in {wins}, "
          f"tied in {ties}, worse in {seeds - wins - ties}; mean best val_accuracy random {r.mean():.4f}, "
          f"bayesian {b.mean():.4f}")


def speed(trials):
    import optuna
    from scipy.stats import loguniform
    from sklearn.model_selection import RandomizedSearchCV

    from fastnn import MLPClassifier

    def rate(label, run):
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        print(f"{label:<44} {trials / seconds * 60:8.1f} trials/min ({seconds:.1f} s)", flush=True)

    with tempfile.TemporaryDirectory() as d:
        for name, executor, n_jobs in (("in process", None, None), ("processes n_jobs=1", "processes", 1),
                                       ("processes n_jobs=2", "processes", 2)):
            tuner = tune.RandomSearch(build_model, max_trials=trials, seed=0, directory=d, project_name=name,
                                      executor=executor, n_jobs=n_jobs)
            rate(f"fastnn.tune RandomSearch, {name}",
                 lambda tuner=tuner: tuner.search(X, Y, epochs=EPOCHS, validation_data=VAL))

    def objective(trial):
        model = nn.Sequential([nn.Dense(trial.suggest_int("units", 8, 128, log=True), "relu"), nn.Dense(10)],
                              loss="sparse_categorical_crossentropy",
                              optimizer=nn.SGD(trial.suggest_float("lr", 1e-5, 1.0, log=True), momentum=0.9),
                              seed=0)
        return model.fit(X, Y, epochs=EPOCHS, validation_data=VAL, verbose=0)["val_accuracy"][-1]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rate("Optuna alone (random sampler), same model", lambda: study.optimize(objective, n_trials=trials))
    search = RandomizedSearchCV(MLPClassifier(max_iter=EPOCHS, solver="sgd", momentum=0.9, random_state=0),
                                {"hidden_layer_sizes": [(8,), (16,), (32,), (64,), (128,)],
                                 "learning_rate_init": loguniform(1e-5, 1.0)},
                                n_iter=trials, cv=[(np.arange(1000), np.arange(1000, len(Y_ALL)))],
                                random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rate("scikit-learn RandomizedSearchCV, fastnn.MLPClassifier", lambda: search.fit(X_ALL, Y_ALL))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("quality", "speed"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    if args.what == "quality":
        quality(args.seeds, args.trials)
    else:
        speed(args.trials)
