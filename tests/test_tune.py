"""fastnn.tune on digits: small models, few epochs.

The proofs here: each tuner finds a configuration within 1% of the best of a
grid evaluated exhaustively; PBT reaches the accuracy of the best member
trained with its own learning rate throughout, in the same epochs; select_size
stops at the first significant rise; the executors give the same trials; a
search killed with SIGKILL resumes without retraining; failures, corrupt and
foreign files are reported. Bayesian against random search over many seeds is
in bench/tune_bayes_vs_random.py (too slow for a test).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fastnn import nn, tune
from fastnn.tune.hp import HyperParameters, random_draw, spec_from_config
from fastnn.tune.tuners import grid_points

X_ALL, Y_ALL = load_digits(return_X_y=True)
X_ALL = (X_ALL / 16.0).astype(np.float32)
X, Y = X_ALL[:900], Y_ALL[:900]
VAL = (X_ALL[900:1300], Y_ALL[900:1300])
EPOCHS = 3


def build_model(hp):
    """Width and learning rate: a 3 x 3 grid (Choice), with clear differences."""
    return nn.Sequential([nn.Dense(hp.Choice("units", [4, 16, 64]), "relu"), nn.Dense(10)],
                         loss="sparse_categorical_crossentropy",
                         optimizer=nn.Adam(hp.Choice("lr", [1e-4, 1e-3, 1e-2])), seed=0)


def conditional_model(hp):
    layers = [nn.Dense(hp.Int("units", 8, 32, step=8), "relu")]
    if hp.Boolean("deep"):
        layers.append(nn.Dense(hp.Choice("units2", [8, 16]), "relu"))
    return nn.Sequential(layers + [nn.Dense(10)], loss="sparse_categorical_crossentropy",
                         optimizer=nn.Adam(hp.Float("lr", 1e-3, 1e-1, sampling="log")), seed=0)


def sgd_model(hp):
    return nn.Sequential([nn.Dense(32, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                         optimizer=nn.SGD(hp.Float("lr", 1e-4, 1.0, sampling="log"), momentum=0.9), seed=0)


def options(tmp_path, name, **kw):
    return dict(seed=0, directory=tmp_path, project_name=name, **kw)


# ------------------------------------------------------------ hyperparameters
def test_hp_define_by_run_draws_only_the_branch_taken():
    for seed in range(20):
        hp = HyperParameters(draw=random_draw((seed,)))
        conditional_model(hp)
        assert ("units2" in hp.values) == hp.values["deep"]
        assert list(hp.values) == list(hp.space)
        assert hp.values["units"] in (8, 16, 24, 32) and 1e-3 <= hp.values["lr"] <= 1e-1
    # the draws of one name do not depend on the branch taken before it
    a = HyperParameters(draw=random_draw((3,)))
    b = HyperParameters(draw=random_draw((3,)))
    a.Boolean("x"), a.Float("lr", 0.0, 1.0)
    b.Float("lr", 0.0, 1.0)
    assert a.values["lr"] == b.values["lr"]


def test_hp_checks():
    hp = HyperParameters()
    assert hp.Int("n", 2, 10, step=4) == 2 and hp.space["n"].grid() == [2, 6, 10]
    assert hp.Float("f", 1e-3, 1e-1, step=10, sampling="log") == 1e-3
    assert np.allclose(hp.space["f"].grid(), [1e-3, 1e-2, 1e-1])
    assert hp.Int("n", 2, 10, step=4) == 2  # asked again: the same value
    with pytest.raises(ValueError, match="defined twice"):
        hp.Int("n", 2, 12, step=4)
    with pytest.raises(ValueError, match="log sampling needs min_value > 0"):
        hp.Float("g", 0.0, 1.0, sampling="log")
    with pytest.raises(ValueError, match="not in"):
        HyperParameters(given={"n": 3}).Int("n", 2, 10, step=4)
    with pytest.raises(ValueError, match="not in"):  # True is not the choice 1
        HyperParameters(given={"b": True}).Choice("b", [0, 1, 2])
    assert HyperParameters(given={"x": 7}).Fixed("x", 7) == 7
    # every kind of definition survives its record
    hp = HyperParameters()
    for ask in (lambda: hp.Int("a", 1, 100, sampling="log"), lambda: hp.Int("b", 1, 9, step=2),
                lambda: hp.Float("c", 1e-3, 1.0, sampling="log"), lambda: hp.Float("d", 0, 1, step=0.25),
                lambda: hp.Choice("e", ["x", "y"]), lambda: hp.Boolean("f"), lambda: hp.Fixed("g", 3)):
        ask()
    for spec in hp.space.values():
        assert spec_from_config(json.loads(json.dumps(spec.config()))) == spec


def test_grid_of_a_conditional_space():
    def branching(hp):
        hp.Int("a", 0, 1)
        if hp.Boolean("b"):
            hp.Choice("c", [1, 2, 3])
        return nn.Sequential([nn.Dense(2)])

    points = grid_points(branching)
    # a in {0, 1} x (b False, or b True with c in {1, 2, 3}): 2 * 4 points, each once
    assert len(points) == 8
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 8
    assert all(("c" in p) == p["b"] for p in points)


# ------------------------------------------------------------------ the proof
@pytest.fixture(scope="module")
def grid_best(tmp_path_factory):
    tuner = tune.GridSearch(build_model, **options(tmp_path_factory.mktemp("grid"), "grid"))
    tuner.search(X, Y, epochs=EPOCHS, validation_data=VAL)
    assert len(tuner.trials) == 9 and all(t.status == tune.COMPLETED for t in tuner.trials)
    return tuner.get_best_trials()[0].score


@pytest.mark.parametrize("make", [
    lambda path: tune.RandomSearch(build_model, max_trials=6, **options(path, "random")),
    lambda path: tune.BayesianOptimization(build_model, max_trials=6, num_initial_points=3,
                                           **options(path, "bayes")),
    lambda path: tune.Hyperband(build_model, max_epochs=EPOCHS, factor=3, hyperband_iterations=2,
                               **options(path, "hyperband")),
], ids=["random", "bayesian", "hyperband"])
def test_tuner_finds_a_configuration_within_1_percent_of_the_grid_best(make, grid_best, tmp_path):
    tuner = make(tmp_path)
    tuner.search(X, Y, epochs=EPOCHS, validation_data=VAL)
    best = tuner.get_best_trials()[0]
    assert best.score >= grid_best - 0.01
    # the kept model is the trained one: it scores what the trial recorded
    model = tuner.get_best_models()[0]
    assert model.evaluate(*VAL)["accuracy"] == pytest.approx(best.score, abs=1e-6)
    assert tuner.get_best_hyperparameters()[0].values == best.hyperparameters


def test_hyperband_continues_the_survivors(tmp_path):
    calls = []

    def counted(hp):
        calls.append(dict(hp.values))
        return build_model(hp)

    tuner = tune.Hyperband(counted, max_epochs=9, factor=3, **options(tmp_path, "hb"))
    tuner.search(X[:300], Y[:300], validation_data=VAL)
    brackets = tuner.brackets()
    assert [r for _, r in brackets] == [[(9, 1), (3, 3), (1, 9)], [(5, 3), (1, 9)], [(3, 9)]]
    assert len(tuner.trials) == 17
    assert len(calls) == 17  # each configuration built once: survivors resume their weights
    completed = [t for t in tuner.trials if t.status == tune.COMPLETED]
    assert len(completed) == 1 + 1 + 3 and all(t.epochs == 9 for t in completed)
    assert all(len(t.metrics["val_accuracy"]) == t.epochs for t in tuner.trials)
    pruned = [t for t in tuner.trials if t.status == tune.PRUNED]
    assert sorted(t.epochs for t in pruned) == [1] * 6 + [3] * 2 + [3] * 4


def test_pbt_reaches_the_best_fixed_learning_rate(tmp_path):
    def pbt(q, name):
        tuner = tune.PopulationBasedTraining(sgd_model, population_size=4, perturbation_interval=2,
                                             hyperparam_mutations=["lr"], quantile_fraction=q,
                                             **options(tmp_path, name))
        return tuner.search(X, Y, epochs=8, validation_data=VAL)

    fixed = pbt(0.0, "fixed")  # the same four first configurations, never exploited
    assert all(len(t.schedule) == 1 for t in fixed.trials)
    tuner = pbt(0.25, "pbt")
    best = tuner.get_best_trials()[0]
    assert best.score >= fixed.get_best_trials()[0].score
    assert best.epochs == 8 and len(best.metrics["val_accuracy"]) == 8
    assert any(entry["copied_from"] for t in tuner.trials for entry in t.schedule)
    for t in tuner.trials:  # a lineage: changes at round ends, ending with the values trained with now
        epochs = [entry["epoch"] for entry in t.schedule]
        assert epochs[0] == 0 and epochs == sorted(set(epochs)) and all(e % 2 == 0 for e in epochs)
        assert t.schedule[-1]["hyperparameters"] == t.hyperparameters
    model = tuner.get_best_models()[0]
    assert model.evaluate(*VAL)["accuracy"] == pytest.approx(best.score, abs=1e-6)


def test_select_size_stops_at_the_first_significant_rise():
    built = []

    def by_width(size):
        built.append(size)
        return nn.Sequential([nn.Dense(size, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                             optimizer=nn.Adam(1e-2), seed=0)

    # a one-unit bottleneck cannot separate ten classes: its error rises far above
    result = tune.select_size(by_width, [16, 32, 1, 64], X, Y, cv=3, epochs=EPOCHS, tolerance=0.05,
                              X_test=VAL[0], y_test=VAL[1])
    assert result.sizes == [16, 32, 1] and result.stopped_at == 1
    assert result.errors[2] > min(result.errors[:2]) + 0.05
    assert 64 not in built  # nothing after the rise was trained
    assert result.best_size == [16, 32][int(np.argmin(result.errors[:2]))]
    assert result.model.evaluate(*VAL)["accuracy"] == pytest.approx(1 - result.test_error)


def test_cv_scores_by_the_mean_of_the_folds(tmp_path):
    from sklearn.model_selection import KFold

    tuner = tune.RandomSearch(build_model, max_trials=1, **options(tmp_path, "cv"))
    tuner.search(X[:300], Y[:300], epochs=2, cv=3)
    trial = tuner.trials[0]
    scores = []
    for train, val in KFold(3, shuffle=True, random_state=0).split(X[:300]):
        model = build_model(trial.hp)
        for epoch in range(2):  # one fit call per epoch, seeded by (model seed, epoch)
            history = model.fit(X[train], Y[train], epochs=1, validation_data=(X[val], Y[val]), verbose=0,
                                seed=(model.seed, epoch))
        scores.append(history["val_accuracy"][-1])
    assert trial.score == pytest.approx(np.mean(scores))


def test_objectives(tmp_path):
    tuner = tune.RandomSearch(build_model, objective=tune.Objective("val_loss", "min"), max_trials=3,
                              **options(tmp_path, "loss"))
    tuner.search(X, Y, epochs=1, validation_data=VAL)
    assert tuner.get_best_trials()[0].score == min(t.score for t in tuner.trials)
    assert tune.trials.get_objective("val_loss").direction == "min"
    assert tune.trials.get_objective("accuracy").direction == "max"
    with pytest.raises(ValueError, match="Objective"):
        tune.RandomSearch(build_model, objective="lr", **options(tmp_path, "x"))
    tuner = tune.RandomSearch(build_model, max_trials=1, **options(tmp_path, "noval"))
    tuner.search(X, Y, epochs=1)  # no validation data: no val_accuracy
    assert tuner.trials[0].status == tune.FAILED and "val_accuracy" in tuner.trials[0].error


# ----------------------------------------------------------- nothing is lost
def failing_model(hp):
    """A regression on the digit's value: lr 1e3 diverges, -1 is refused by SGD."""
    lr = hp.Choice("lr", [1e-2, 1e3, -1.0])
    return nn.Sequential([nn.Dense(1)], loss="squared_error", optimizer=nn.SGD(lr), seed=0)


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    tuner = tune.GridSearch(failing_model, objective="val_loss", **options(tmp_path, "fail"))
    tuner.search(X, Y, epochs=2, validation_data=VAL)
    ok, diverged, refused = tuner.trials
    assert ok.status == tune.COMPLETED and ok.model_file is not None
    assert diverged.status == tune.FAILED and "TrainingDivergedError" in diverged.error
    assert refused.status == tune.FAILED and "lr" in refused.error
    # the records on disk say the same
    again = tune.GridSearch(failing_model, objective="val_loss", **options(tmp_path, "fail"))
    assert [(t.status, t.error) for t in again.trials] == [(t.status, t.error) for t in tuner.trials]
    assert "FAILED" in again.results_summary()


def test_resume_does_not_rerun_finished_trials(tmp_path):
    tuner = tune.RandomSearch(build_model, max_trials=2, **options(tmp_path, "resume"))
    tuner.search(X, Y, epochs=1, validation_data=VAL)
    first = [t.to_json() for t in tuner.trials]
    calls = []

    def counted(hp):
        calls.append(hp.values)
        return build_model(hp)

    tuner = tune.RandomSearch(counted, max_trials=4, **options(tmp_path, "resume"))
    assert [t.to_json() for t in tuner.trials] == first
    tuner.search(X, Y, epochs=1, validation_data=VAL)
    assert len(tuner.trials) == 4 and len(calls) == 2
    assert [t.to_json() for t in tuner.trials[:2]] == first
    with pytest.raises(ValueError, match="seed=0"):
        tune.RandomSearch(build_model, **{**options(tmp_path, "resume"), "seed": 1})
    with pytest.raises(ValueError, match="tuner"):
        tune.GridSearch(build_model, **options(tmp_path, "resume"))
    tune.RandomSearch(build_model, overwrite=True, **options(tmp_path, "resume"))
    assert os.listdir(tmp_path / "resume") == ["project.json"]


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    tuner = tune.RandomSearch(build_model, max_trials=1, **options(tmp_path, "p"))
    tuner.search(X, Y, epochs=1, validation_data=VAL)
    record = tmp_path / "p" / "trial_0000.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="trial_0000.json is not a readable"):
        tune.RandomSearch(build_model, **options(tmp_path, "p"))
    record.write_text(text.replace('"COMPLETED"', '"DONE"'))
    with pytest.raises(ValueError, match="status"):
        tune.RandomSearch(build_model, **options(tmp_path, "p"))
    record.write_text(text)
    model_file = tmp_path / "p" / tuner.trials[0].model_file
    model_file.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable fastnn model"):
        tune.RandomSearch(build_model, **options(tmp_path, "p")).get_best_models()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not a fastnn.tune project"):
            tune.RandomSearch(build_model, overwrite=overwrite, **options(tmp_path, "foreign"))
    assert (tmp_path / "foreign" / "notes.txt").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "project.json").write_text('{"format": "keras"}')
    with pytest.raises(ValueError, match="not a fastnn.tune project file"):
        tune.RandomSearch(build_model, **options(tmp_path, "other"))


def test_a_record_keeps_non_finite_metrics(tmp_path):
    # a validation loss can overflow while training goes on: recorded as it is
    project = tune.trials.Project(tmp_path, "p", {"tuner": "random"}, overwrite=False)
    project.write(tune.Trial(0, {"lr": 0.1}, status=tune.COMPLETED, score=0.5,
                             metrics={"val_loss": [float("inf"), 2.0], "val_accuracy": [0.1, 0.5]}))
    trial = project.load_trials()[0]
    assert trial.metrics["val_loss"] == [float("inf"), 2.0] and trial.score == 0.5


KILLED_SEARCH = """
import sys, time
import numpy as np
from sklearn.datasets import load_digits
from fastnn import nn, tune

X, y = load_digits(return_X_y=True)
X = (X / 16.0)[:600]
y = y[:600]

def build_model(hp):
    lr = hp.Float("lr", 1e-3, 1e-1, sampling="log")
    with open(sys.argv[2], "a") as f:  # one line per call
        f.write(repr(lr) + "\\n")
    return nn.Sequential([nn.Dense(32, "relu"), nn.Dense(10)], loss="sparse_categorical_crossentropy",
                         optimizer=nn.Adam(lr), seed=0)

tune.RandomSearch(build_model, max_trials=8, seed=5, directory=sys.argv[1], project_name="killed").search(
    X, y, epochs=3, validation_split=0.25)
"""


def kill_and_resume(tmp_path, source, key):
    """Run the search program `source` (argv: its directory, the file where it
    logs each trial's built `key` value), SIGKILL it once 2 trials completed, run it
    again to the end. Returns ({trial number: key value} completed before the
    kill, the tuner reading the project, the key values built in both runs)."""
    script, calls = tmp_path / "search.py", tmp_path / "calls.txt"
    script.write_text(source)
    project = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def completed():
        done = {}
        for name in os.listdir(project) if project.exists() else ():
            if name.startswith("trial_") and name.endswith(".json"):
                try:
                    record = json.loads((project / name).read_text())
                except ValueError:
                    continue
                if record["status"] == "COMPLETED":
                    done[record["number"]] = record["hyperparameters"][key]
        return done

    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(calls)], env=env)
    deadline = time.monotonic() + 120
    while len(completed()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = completed()
    assert 2 <= len(finished) < 8, "the search was not killed mid-way"
    subprocess.run([sys.executable, str(script), str(tmp_path), str(calls)], env=env, check=True, timeout=120)
    tuner = tune.RandomSearch(lambda hp: None, directory=tmp_path, project_name="killed")
    return finished, tuner, [float(line) for line in calls.read_text().split()]


def test_a_search_killed_with_sigkill_resumes(tmp_path):
    finished, tuner, built = kill_and_resume(tmp_path, KILLED_SEARCH, "lr")
    assert len(tuner.trials) == 8 and all(t.status == tune.COMPLETED for t in tuner.trials)
    for number, lr in finished.items():  # built once: not retrained after the restart
        assert built.count(lr) == 1 and tuner.trials[number].hyperparameters["lr"] == lr
    # every trial built once, and at most the trials running at the kill twice
    assert 8 <= len(built) <= 8 + 1
    assert sorted(set(built)) == sorted(t.hyperparameters["lr"] for t in tuner.trials)


ROUNDS_SEARCH = """
import sys
import numpy as np
from sklearn.datasets import load_digits
from fastnn import nn, tune

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)

def build_model(hp):
    return nn.Sequential([nn.Dense(hp.Int("units", 8, 32, step=8), "relu"), nn.Dense(10)],
                         loss="sparse_categorical_crossentropy",
                         optimizer=nn.SGD(hp.Float("lr", 1e-4, 1.0, sampling="log"), momentum=0.9), seed=0)

def make(kind, directory, name):
    if kind == "pbt":
        return tune.PopulationBasedTraining(build_model, population_size=4, perturbation_interval=1,
                                            hyperparam_mutations=["lr"], quantile_fraction=0.5, seed=3,
                                            directory=directory, project_name=name)
    return tune.Hyperband(build_model, max_epochs=9, factor=3, seed=3, directory=directory, project_name=name)

if __name__ == "__main__":
    make(sys.argv[1], sys.argv[2], sys.argv[3]).search(X[:900], y[:900], epochs=6,
                                                       validation_data=(X[900:1300], y[900:1300]))
"""


@pytest.mark.parametrize("kind", ["pbt", "hyperband"])
def test_rounds_killed_with_sigkill_resume_to_the_same_result(kind, tmp_path):
    """PBT and Hyperband write their state between rounds; killed mid-way and run
    again, they end with the records of an uninterrupted search."""
    script = tmp_path / "rounds.py"
    script.write_text(ROUNDS_SEARCH)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = [sys.executable, str(script), kind, str(tmp_path)]
    subprocess.run(run + ["whole"], env=env, check=True, timeout=300)
    project = tmp_path / "killed"

    def epochs_trained():
        total = 0
        for f in project.glob("trial_*.json"):
            try:
                total += json.loads(f.read_text())["epochs"]
            except ValueError:
                pass
        return total

    proc = subprocess.Popen(run + ["killed"], env=env)
    deadline = time.monotonic() + 120
    half = {"pbt": 4 * 6, "hyperband": 3 * 9 + 5 * 3 + 9 + 3 * 9}[kind] // 2  # of every epoch trained
    while epochs_trained() < half and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the search ended before it was killed"
    subprocess.run(run + ["killed"], env=env, check=True, timeout=300)

    def records(name):
        out = []
        for f in sorted((tmp_path / name).glob("trial_*.json")):
            r = json.loads(f.read_text())
            out.append({k: r[k] for k in ("number", "hyperparameters", "status", "score", "metrics", "epochs",
                                          "schedule")})
        return out

    assert records("killed") == records("whole")


# ------------------------------------------------------------------ executors
def trial_table(tuner):
    return [(t.number, t.hyperparameters, t.status, t.score) for t in tuner.trials]


def test_processes_give_the_same_trials(tmp_path):
    for cls, kw in ((tune.RandomSearch, {"max_trials": 4}), (tune.GridSearch, {"max_trials": 4})):
        local = cls(build_model, **options(tmp_path, cls.kind + "local"), **kw)
        local.search(X, Y, epochs=1, validation_data=VAL)
        pooled = cls(build_model, executor="processes", n_jobs=2, **options(tmp_path, cls.kind + "pool"),
                     **kw)
        pooled.search(X, Y, epochs=1, validation_data=VAL)
        assert trial_table(pooled) == trial_table(local)


@pytest.fixture(scope="module")
def dask_client():
    """A Client of a local cluster of two single-threaded worker processes."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def test_dask_cluster_gives_the_same_trials(tmp_path, dask_client):
    for cls, kw in ((tune.RandomSearch, {"max_trials": 4}), (tune.GridSearch, {"max_trials": 4})):
        local = cls(build_model, **options(tmp_path, cls.kind + "local"), **kw)
        local.search(X, Y, epochs=1, validation_data=VAL)
        remote = cls(build_model, executor=dask_client, **options(tmp_path, cls.kind + "dask"), **kw)
        remote.search(X, Y, epochs=1, validation_data=VAL)
        assert trial_table(remote) == trial_table(local)
    # PBT: the members' weights travel to and from the workers as arrays
    pbt = [tune.PopulationBasedTraining(sgd_model, population_size=4, perturbation_interval=1,
                                        hyperparam_mutations=["lr"], executor=ex,
                                        **options(tmp_path, f"pbt{i}"))
           for i, ex in enumerate((None, dask_client))]
    for tuner in pbt:
        tuner.search(X, Y, epochs=3, validation_data=VAL)
    assert trial_table(pbt[1]) == trial_table(pbt[0])
    assert [t.schedule for t in pbt[1].trials] == [t.schedule for t in pbt[0].trials]


def logged_model(path, hp):
    """build_model for the worker-kill test: writes the calling process's id to `path`."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return build_model(hp)


def test_a_dask_worker_killed_mid_trial_leaves_the_search_going(tmp_path, dask_client):
    import functools
    import threading

    client, calls, killed = dask_client, tmp_path / "calls.txt", []
    pids = client.run(os.getpid)
    tuner = tune.RandomSearch(functools.partial(logged_model, str(calls)), max_trials=6, executor=client,
                              **options(tmp_path, "k"))

    def kill_a_busy_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            # a worker that has built a model (is past its start-up) and runs a trial
            started = set(calls.read_text().split()) if calls.exists() else set()
            busy = [w for w, keys in client.processing().items() if keys and str(pids.get(w)) in started]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    tuner.search(X, Y, epochs=8, validation_data=VAL)
    killer.join()
    assert killed, "no worker was killed during the search"
    assert len(tuner.trials) == 6 and all(t.status == tune.COMPLETED for t in tuner.trials)
    assert len(calls.read_text().split()) > 6  # the killed worker's trial was built again elsewhere


# ----------------------------------------------------------------- packaging
def test_fastnn_imports_neither_optuna_nor_dask():
    code = ("import sys, fastnn, fastnn.nn, fastnn.tune; "
            "print([m for m in ('optuna', 'dask', 'distributed') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"


def test_bayesian_without_optuna_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install 'fastnn-cpu\[tune\]'"):
        tune.BayesianOptimization(build_model, **options(tmp_path, "b"))


def test_summary_and_plot(tmp_path):
    tuner = tune.PopulationBasedTraining(sgd_model, population_size=2, perturbation_interval=1,
                                         hyperparam_mutations=["lr"], quantile_fraction=0.5,
                                         **options(tmp_path, "plot"))
    tuner.search(X[:200], Y[:200], epochs=2, validation_data=VAL)
    text = tuner.results_summary()
    assert "val_accuracy (max)" in text and all(t.trial_id in text for t in tuner.trials)
    pytest.importorskip("matplotlib")
    tuner.plot(tmp_path / "search.png")
    assert (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG"
