"""The scikit-learn estimators: the estimator contract (check_estimator), sequences in every
accepted form, sample weights, partial_fit, early stopping, pickling, and clear errors."""
import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from cyrnn.sklearn import (RNNClassifier, RNNRegressor,  # noqa: E402
                           expected_failed_checks)


@parametrize_with_checks(
    [RNNClassifier(), RNNRegressor(), RNNClassifier(cell="lstm"), RNNRegressor(cell="lstm"),
     RNNClassifier(cell="gru"), RNNRegressor(cell="gru"),
     RNNClassifier(cell="gru", norm="layer", zoneout=0.1, recurrent_dropout=0.1),
     RNNRegressor(norm="batch", weight_drop=0.1)],
    expected_failed_checks=expected_failed_checks)
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def sequences():
    """Two classes: whether the first feature sums to more than 0 (needs the whole sequence)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 6, 3))
    y = np.where(X[:, :, 0].sum(axis=1) > 0, "up", "down")
    return X, y


def test_classifier_learns_and_reports(sequences):
    X, y = sequences
    clf = RNNClassifier(max_iter=30, random_state=0).fit(X, y)
    assert list(clf.classes_) == ["down", "up"]
    assert clf.n_features_in_ == 3 and clf.model_.input_size == 3
    assert clf.model_.output == "sigmoid" and clf.model_.output_size == 1
    assert clf.score(X, y) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (80, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.n_iter_ == len(clf.loss_curve_) <= 30


def test_multiclass_uses_softmax(sequences):
    X, _ = sequences
    y = np.digitize(X[:, :, 0].sum(axis=1), [-1.0, 1.0])  # three classes
    clf = RNNClassifier(max_iter=3, random_state=0).fit(X, y)
    assert clf.model_.output == "softmax" and clf.model_.output_size == 3
    assert clf.predict_proba(X).shape == (80, 3)


def test_ragged_lists_use_lengths(sequences):
    X, y = sequences
    ragged = [x[: 3 + i % 4] for i, x in enumerate(X)]
    clf = RNNClassifier(max_iter=3, random_state=0).fit(ragged, y)
    together = clf.predict_proba(ragged)
    one_by_one = np.vstack([clf.predict_proba(x[None]) for x in ragged])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-12)
    # univariate ragged sequences (T_i,)
    uni = [x[:, 0] for x in ragged]
    assert RNNClassifier(max_iter=1).fit(uni, y).n_features_in_ == 1


def test_univariate_table_and_sequences(sequences):
    X, y = sequences
    table = X[:, :, 0]  # (n_samples, T): one feature per step
    clf = RNNClassifier(max_iter=2, random_state=0).fit(table, y)
    assert clf.n_features_in_ == 6 and clf.model_.input_size == 1
    np.testing.assert_array_equal(clf.predict_proba(table), clf.predict_proba(table[:, :, None]))
    with pytest.raises(ValueError, match="X has 5 features, but RNNClassifier is expecting 6"):
        clf.predict(table[:, :5])
    seq = RNNClassifier(max_iter=2, random_state=0).fit(table[:, :, None], y)
    # a model fitted on univariate sequences reads any length
    assert seq.predict(table[:, :4]).shape == (80,)


def test_bad_input(sequences):
    X, y = sequences
    with pytest.raises(ValueError, match=r"X\[1\]: 2 features per step, but X\[0\] has 3"):
        RNNClassifier().fit([X[0], X[1, :4, :2]], y[:2])
    with pytest.raises(ValueError, match=r"X\[1\]: empty sequence"):
        RNNClassifier().fit([X[0], X[1, :0]], y[:2])
    with pytest.raises(ValueError, match="y: expected 80 labels"):
        RNNClassifier().fit(X, y[:70])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        RNNClassifier().fit(X[:, :, 0], y[:70])
    with pytest.raises(ValueError, match="y: expected 80 targets"):
        RNNRegressor().fit(X, np.zeros(79))
    with pytest.raises(NotFittedError):
        RNNClassifier().predict(X)
    with pytest.raises(NotFittedError):
        RNNRegressor().predict(X)
    with pytest.raises(ValueError, match="cell: expected one of 'elman', 'lstm', 'gru', got "
                                         "'peephole'"):
        RNNClassifier(cell="peephole").fit(X, y)
    clf = RNNClassifier(max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="X has 2 features per step, but RNNClassifier is "
                                         "expecting 3"):
        clf.predict(X[:, :, :2])
    with pytest.raises(ValueError, match="Reshape your data"):
        clf.predict(X[0, 0])
    with pytest.raises(ValueError, match="a classifier needs at least 2 classes"):
        RNNClassifier().fit(X, np.zeros(80))
    with pytest.raises(ValueError, match="classes: partial_fit needs every class"):
        RNNClassifier().partial_fit(X, y)


def test_partial_fit_continues(sequences):
    X, y = sequences
    clf = RNNClassifier(random_state=0)
    clf.partial_fit(X[:40], y[:40], classes=["down", "up"])
    weights = clf.model_.params["Whh"].copy()
    clf.partial_fit(X[40:], y[40:])
    assert clf.n_iter_ == 2
    assert not np.array_equal(weights, clf.model_.params["Whh"])
    with pytest.raises(ValueError, match="labels"):
        clf.partial_fit(X[:5], np.array(["left"] * 5))
    # two epochs by partial_fit equal fit with max_iter=2 (same shuffling stream)
    twice = RNNClassifier(random_state=0)
    for _ in range(2):
        twice.partial_fit(X, y, classes=["down", "up"])
    np.testing.assert_array_equal(
        twice.predict_proba(X), RNNClassifier(random_state=0, max_iter=2, tol=0).fit(X, y)
        .predict_proba(X))


def test_early_stopping_keeps_the_best_epoch(sequences):
    X, y = sequences
    clf = RNNClassifier(max_iter=200, early_stopping=True, n_iter_no_change=3, lr=0.05,
                        random_state=0).fit(X, y)
    assert clf.n_iter_ < 200
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_loss_ == min(clf.validation_scores_)


def test_sample_weight_weights_each_sequence_loss(sequences):
    X, y = sequences
    clf = RNNRegressor(random_state=0, max_iter=1).fit(X[:4], np.arange(4.0))
    target = np.arange(4.0)[:, None]
    w = np.array([1.0, 3.0, 0.5, 3.0])
    value, grads = clf._loss(X[:4], target, None, w, need_grads=True)
    expected_value, expected = 0.0, None
    for i in range(4):  # each sequence alone, weighted by hand
        v, g, _ = clf.model_.loss_and_grad(X[i:i + 1], target[i:i + 1], target_steps="last")
        expected_value += w[i] * v / 4
        expected = {k: w[i] * g[k] / 4 + (0 if expected is None else expected[k])
                    for k in clf.model_.params}
    assert value == pytest.approx(expected_value, rel=1e-12)
    for k in expected:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-10, atol=1e-14)


def test_regressor_sequence_to_sequence():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 10, 1))
    y = np.cumsum(X[:, :, 0], axis=1) / 3  # a target per step: the running sum
    reg = RNNRegressor(target_steps="all", max_iter=60, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (64, 10)
    assert reg.score(X, y) > 0.9
    ragged = [x[: 5 + i % 5] for i, x in enumerate(X)]
    out = reg.predict(ragged)
    assert [len(p) for p in out] == [len(x) for x in ragged]
    np.testing.assert_allclose(out[3], reg.predict(ragged[3][None])[0], rtol=1e-12)
    ragged_y = [t[: len(x)] for t, x in zip(y, ragged)]
    assert reg.score(ragged, ragged_y) > 0.9
    # next-step forecasting: the inputs shifted by one step are the targets
    series = np.sin(np.linspace(0, 20, 400)).reshape(20, 20)
    nxt = RNNRegressor(target_steps="all", max_iter=40, random_state=0)
    nxt.fit(series[:, :-1], series[:, 1:])
    assert nxt.score(series[:, :-1], series[:, 1:]) > 0.9


def test_multi_output_regression(sequences):
    X, _ = sequences
    y = np.stack([X[:, :, 0].sum(axis=1), X[:, :, 1].mean(axis=1)], axis=1)
    reg = RNNRegressor(max_iter=5, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (80, 2) and reg.n_outputs_ == 2


def test_pickle_and_clone_of_a_fitted_estimator(sequences):
    X, y = sequences
    clf = RNNClassifier(max_iter=2, random_state=0).fit(X, y)
    blob = pickle.dumps(clf)
    assert b"cyrnn.kernels" not in blob
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    again.partial_fit(X, y)  # the optimizer came along and still drives the model's arrays
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    fresh = sklearn.base.clone(clf)
    assert not hasattr(fresh, "model_") and fresh.get_params() == clf.get_params()


def test_pipeline_grid_search_and_cross_validation(sequences):
    X, y = sequences
    pipe = make_pipeline(FunctionTransformer(lambda a: a / 2), RNNClassifier(max_iter=3))
    grid = GridSearchCV(pipe, {"rnnclassifier__hidden_size": [4, 8]}, cv=2, n_jobs=2).fit(X, y)
    assert grid.best_params_["rnnclassifier__hidden_size"] in (4, 8)
    scores = cross_val_score(RNNRegressor(max_iter=2), X, X[:, :, 0].sum(axis=1), cv=2)
    assert scores.shape == (2,)


def test_digits_example_fast():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "examples" / "digits.py"
    spec = importlib.util.spec_from_file_location("digits_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--fast"])
    accuracy, seconds = results["threads"]
    assert accuracy > 0.85


# ---------------------------------------------------------------------------------------------
# normalized and regularized recurrences
# ---------------------------------------------------------------------------------------------


def test_recurrence_options_reach_the_model(sequences):
    X, y = sequences
    options = {"norm": "layer", "recurrent_dropout": 0.1, "zoneout": 0.05, "weight_drop": 0.2}
    defaults = {"norm": None, "recurrent_dropout": 0.0, "zoneout": 0.0, "weight_drop": 0.0}
    for cls in (RNNClassifier, RNNRegressor):
        assert {k: cls().get_params()[k] for k in defaults} == defaults
        est = cls(cell="lstm", max_iter=1, random_state=0, **options)
        assert {k: est.get_params()[k] for k in options} == options
        target = y if cls is RNNClassifier else X[:, :, 0].sum(axis=1)
        model = est.fit(X, target).model_
        assert {k: model.config()[k] for k in options} == options
        assert {"gx", "gh", "gc", "bc"} <= set(model.params)
        assert sklearn.base.clone(est).get_params() == est.get_params()


def test_layer_normalized_lstm_learns(sequences):
    X, y = sequences
    clf = RNNClassifier(cell="lstm", norm="layer", zoneout=0.05, max_iter=30,
                        random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.85
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_batch_norm_estimator(sequences):
    X, y = sequences
    # 33 sequences in batches of 8: the last one joins the batch before (batch statistics)
    clf = RNNClassifier(norm="batch", batch_size=8, max_iter=5, random_state=0)
    clf.fit(X[:33], y[:33])
    model = clf.model_
    assert model.running and all(a.shape[0] == 6 for a in model.running.values())
    # predictions use the running statistics: a sequence's does not depend on the others
    together = clf.predict_proba(X)
    alone = np.vstack([clf.predict_proba(X[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(alone, together[:5], rtol=1e-12)
    with pytest.raises(ValueError, match="it needs at least 2 sequences, got 1 sample"):
        RNNClassifier(norm="batch").fit(X[:2], ["a", "b"], sample_weight=[1.0, 0.0])
    with pytest.raises(ValueError, match="sample_weight: with norm='batch' the weights must be "
                                         "equal"):
        RNNClassifier(norm="batch").fit(X, y, sample_weight=np.r_[np.ones(40), 2 * np.ones(40)])
    # equal weights (and zeros) are fine
    RNNClassifier(norm="batch", max_iter=1).fit(X, y, sample_weight=np.r_[np.ones(79), 0.0])
    # pickles with its statistics
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), together)


def test_early_stopping_restores_the_running_statistics_of_the_best_epoch(sequences):
    X, y = sequences
    target = X[:, :, 0].sum(axis=1)
    reg = RNNRegressor(norm="batch", early_stopping=True, n_iter_no_change=2, max_iter=10,
                       random_state=0)
    scores = iter([1.0, 2.0, 3.0, 4.0])
    reg._mean_loss = lambda data: next(scores)  # validation: epoch 1 the best, then worse
    reg.fit(X, target)
    assert reg.n_iter_ == 3
    first = RNNRegressor(norm="batch", early_stopping=True, max_iter=1,
                         random_state=0).fit(X, target)
    for name, p in first.model_.params.items():
        np.testing.assert_array_equal(reg.model_.params[name], p)
    for name, a in first.model_.running.items():
        np.testing.assert_array_equal(reg.model_.running[name], a)
