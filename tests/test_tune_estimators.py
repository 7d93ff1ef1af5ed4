"""fastnn.tune with a scikit-learn estimator and a space in place of build_model:
MLPClassifier on digits, a few partial_fit epochs per trial.

The proofs here: random search finds a configuration within 1% of the best of
a grid evaluated exhaustively; Hyperband continues its survivors (their solver
counted every epoch of the rungs); PBT's exploit gives a member the donor's
network and solver state under its new learning rate; a search killed with
SIGKILL resumes without retraining its finished trials.
"""

import copy

import numpy as np
import pytest
from sklearn.datasets import load_digits
from test_tune import kill_and_resume

from fastnn import MLPClassifier, tune
from fastnn.estimators import update_solver
from fastnn.tune.fitting import Data, Task, run_task

X_ALL, Y_ALL = load_digits(return_X_y=True)
X_ALL = (X_ALL / 16.0).astype(np.float32)
X, Y = X_ALL[:900], Y_ALL[:900]
VAL = (X_ALL[900:1300], Y_ALL[900:1300])
EPOCHS = 4
ESTIMATOR = MLPClassifier((32,), random_state=0)
SPACE = {"alpha": tune.Float("alpha", 1e-5, 1e-1, sampling="log"),
         "learning_rate_init": tune.Float("learning_rate_init", 1e-3, 1e-1, sampling="log")}


def options(tmp_path, name, **kw):
    return dict(seed=0, directory=tmp_path, project_name=name, **kw)


def test_random_search_over_an_estimator_within_1_percent_of_the_grid(tmp_path):
    grid_space = {"alpha": tune.Choice("alpha", [1e-5, 1e-3, 1e-1]),
                  "learning_rate_init": tune.Choice("learning_rate_init", [1e-3, 1e-2, 1e-1])}
    grid = tune.GridSearch(ESTIMATOR, space=grid_space, **options(tmp_path, "grid"))
    grid.search(X, Y, epochs=EPOCHS, validation_data=VAL)
    assert len(grid.trials) == 9 and all(t.status == tune.COMPLETED for t in grid.trials)
    grid_best = grid.get_best_trials()[0].score

    tuner = tune.RandomSearch(ESTIMATOR, space=SPACE, max_trials=8, **options(tmp_path, "random"))
    tuner.search(X, Y, epochs=EPOCHS, validation_data=VAL)
    best = tuner.get_best_trials()[0]
    assert best.score >= grid_best - 0.01
    # the kept estimator is the trained one, with the trial's parameters
    est = tuner.get_best_models()[0]
    assert isinstance(est, MLPClassifier) and est.score(*VAL) == pytest.approx(best.score, abs=1e-9)
    assert {k: est.get_params()[k] for k in SPACE} == best.hyperparameters
    assert est.n_iter_ == 1 and len(est.loss_curve_) == EPOCHS  # one partial_fit call per epoch
    assert ESTIMATOR.get_params()["alpha"] == 1e-4 and not hasattr(ESTIMATOR, "model_")  # a clone trained
    assert set(best.metrics) == {"loss", "val_loss", "val_score", "val_accuracy"}


def test_objectives_and_validation_split(tmp_path):
    tuner = tune.RandomSearch(ESTIMATOR, space=SPACE, objective="val_loss", max_trials=2,
                              **options(tmp_path, "split"))
    tuner.search(X, Y, epochs=2, validation_split=0.25)
    assert tuner.objective.direction == "min"
    trial = tuner.get_best_trials()[0]
    est = tuner.get_best_models()[0]
    proba = est.predict_proba(X[675:])  # the last quarter held out
    log_loss = -np.mean(np.log(proba[np.arange(225), Y[675:]]))
    assert trial.score == pytest.approx(log_loss, rel=1e-5)
    assert est.t_ == 2 * 675  # trained on the other rows only
    cv = tune.RandomSearch(ESTIMATOR, space=SPACE, objective="val_score", max_trials=1,
                           **options(tmp_path, "cv"))
    cv.search(X, Y, epochs=1, cv=3)
    assert cv.trials[0].status == tune.COMPLETED and 0 < cv.trials[0].score <= 1


def test_estimator_search_checks(tmp_path):
    with pytest.raises(ValueError, match="'units', which is not a parameter"):
        tune.RandomSearch(ESTIMATOR, space={"units": tune.Int("units", 1, 4)}, **options(tmp_path, "a"))
    with pytest.raises(TypeError, match="named 'alpha'"):
        tune.RandomSearch(ESTIMATOR, space={"alpha": tune.Float("lr", 0.1, 1)}, **options(tmp_path, "b"))
    with pytest.raises(TypeError, match="space="):
        tune.RandomSearch(ESTIMATOR, **options(tmp_path, "c"))
    with pytest.raises(TypeError, match="partial_fit"):
        tune.RandomSearch(MLPClassifier(solver="lbfgs"), space=SPACE, **options(tmp_path, "d"))
    tuner = tune.RandomSearch(ESTIMATOR, space=SPACE, max_trials=1, **options(tmp_path, "e"))
    tuner.search(X, Y, epochs=1, validation_data=VAL, batch_size=32)
    assert tuner.trials[0].status == tune.FAILED and "estimator's parameters" in tuner.trials[0].error


def test_update_solver_changes_the_rate_and_keeps_the_state():
    for solver in ("adam", "sgd"):
        est = MLPClassifier((16,), solver=solver, random_state=0).partial_fit(X, Y, classes=np.arange(10))
        before = copy.deepcopy(est.model_.optimizer)
        update_solver(est.set_params(learning_rate_init=0.05))
        after = est.model_.optimizer
        assert after is not before and after.is_bound_to(est.model_._params)
        assert after.t == before.t and after.lr0 == after.lr == 0.05
        for name in before.state_names:
            np.testing.assert_array_equal(after.state[name], before.state[name])
        est.partial_fit(X, Y)  # the next epoch steps with the new rate
        assert est._optimizer.learning_rate == 0.05 and est.model_.optimizer is after
    assert update_solver(MLPClassifier()) is not None  # unfitted: nothing to update


def test_pbt_exploit_continues_from_the_donor_with_the_new_rate():
    donor = MLPClassifier((16,), random_state=0, learning_rate_init=0.01)
    data = Data(X, Y, validation_data=VAL)
    space = tune.tuners.EstimatorSpace(donor, SPACE)
    values = {"alpha": 1e-4, "learning_rate_init": 0.01}
    trained = run_task(Task(0, space, values, (0, 0), 2), data).model
    explored = {"alpha": 1e-4, "learning_rate_init": 0.03}
    seed = (0, 1)  # the exploited member's shuffling
    member = run_task(Task(1, space, explored, seed, 1, 2, copy.deepcopy(trained), transplant=True), data)
    assert member.error is None
    est = member.model
    assert est.learning_rate_init == 0.03 and est.model_.optimizer.lr0 == 0.03
    assert len(est.loss_curve_) == 3 and est.t_ == 3 * len(X)  # the donor's two epochs and one more

    def continued(lr):
        # the donor continued by hand, its rate set to lr, over the member's epoch
        by_hand = copy.deepcopy(trained)
        update_solver(by_hand.set_params(learning_rate_init=lr))
        order = np.random.default_rng([*seed, 2]).permutation(len(X))
        return by_hand.partial_fit(X[order], Y[order]).model_.get_flat_params()

    np.testing.assert_array_equal(est.model_.get_flat_params(), continued(0.03))
    assert not np.array_equal(est.model_.get_flat_params(), continued(0.01))


def test_hyperband_and_pbt_with_an_estimator(tmp_path):
    hyperband = tune.Hyperband(ESTIMATOR, space=SPACE, max_epochs=9, factor=3, **options(tmp_path, "hb"))
    hyperband.search(X[:300], Y[:300], validation_data=VAL)
    assert len(hyperband.trials) == 17
    completed = [t for t in hyperband.trials if t.status == tune.COMPLETED]
    assert len(completed) == 5 and all(t.epochs == 9 for t in completed)
    for trial, est in zip(hyperband.get_best_trials(5), hyperband.get_best_models(5)):
        # continued through the rungs, not retrained: every epoch counted once
        assert est.t_ == 9 * 300 and len(est.loss_curve_) == 9
        assert est.score(*VAL) == pytest.approx(trial.score, abs=1e-9)

    def pbt(q, name):
        tuner = tune.PopulationBasedTraining(ESTIMATOR, space=SPACE, population_size=4,
                                             perturbation_interval=2, quantile_fraction=q,
                                             hyperparam_mutations=["learning_rate_init"],
                                             **options(tmp_path, name))
        return tuner.search(X, Y, epochs=6, validation_data=VAL)

    fixed, tuner = pbt(0.0, "fixed"), pbt(0.25, "pbt")
    best = tuner.get_best_trials()[0]
    assert best.score >= fixed.get_best_trials()[0].score
    exploited = [t for t in tuner.trials if len(t.schedule) > 1]
    assert exploited
    for trial, est in zip(tuner.trials, [tune.fitting.load_model(tuner.project.model_path(t))
                                         for t in tuner.trials]):
        assert est.t_ == 6 * len(X) and len(est.loss_curve_) == 6  # one lineage of six epochs
        assert est.learning_rate_init == trial.hyperparameters["learning_rate_init"]
        assert est.model_.optimizer.lr0 == est.learning_rate_init
        assert trial.metrics["loss"] == pytest.approx(est.loss_curve_, rel=1e-12)


KILLED_SEARCH = """
import sys
import numpy as np
from sklearn.datasets import load_digits
from fastnn import MLPClassifier, tune

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)


class Counted(MLPClassifier):
    # a trial starting from scratch writes its learning rate
    def partial_fit(self, X, y, **kw):
        if not hasattr(self, "model_"):
            with open(sys.argv[2], "a") as f:
                f.write(f"{self.learning_rate_init!r}\\n")
        return super().partial_fit(X, y, **kw)


space = {"learning_rate_init": tune.Float("learning_rate_init", 1e-3, 1e-1, sampling="log")}
tune.RandomSearch(Counted((16,), random_state=0), space=space, max_trials=8, seed=5, directory=sys.argv[1],
                  project_name="killed").search(X, y, epochs=3, validation_split=0.25)
"""


def test_an_estimator_search_killed_with_sigkill_resumes(tmp_path):
    finished, tuner, started = kill_and_resume(tmp_path, KILLED_SEARCH, "learning_rate_init")
    assert len(tuner.trials) == 8 and all(t.status == tune.COMPLETED for t in tuner.trials)
    for number, lr in finished.items():  # started once: not retrained after the restart
        assert started.count(lr) == 1 and tuner.trials[number].hyperparameters["learning_rate_init"] == lr
    assert 8 <= len(started) <= 8 + 1  # at most the trial running at the kill twice
    assert sorted(set(started)) == sorted(t.hyperparameters["learning_rate_init"] for t in tuner.trials)
