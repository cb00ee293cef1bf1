"""fit_many: parallel training equals serial training bit for bit, on every executor; pickling
of models; clear errors for what cannot travel; a Dask LocalCluster running a grid search."""
import copy
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

import cyrnn
from cyrnn.parallel import fit_many

FIT = dict(epochs=2, batch_size=4, lr=0.01, clip_norm=5.0, seed=3)


def make_models(n=3):
    # a stack with dropout: the model's own generator is part of what must be reproduced
    return [cyrnn.RNN(3, 8, 2, num_layers=2, dropout=0.3, seed=10 + i, batch_first=True)
            for i in range(n)]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6, 3)).astype(np.float32)  # (N, T, I), batch first
    y = np.cumsum(x[..., :2], axis=1) / 4
    return x, y


@pytest.fixture(scope="module")
def serial(data):
    """Each model trained alone with cyrnn.fit, one BLAS thread: the reference."""
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1):
        for model in make_models():
            history = cyrnn.fit(model, data, **FIT)
            out.append((model, history))
    return out


def assert_same(results, reference):
    assert len(results) == len(reference)
    for (model, history), (ref, ref_history) in zip(results, reference):
        for name in ref.params:
            np.testing.assert_array_equal(model.params[name], ref.params[name], err_msg=name)
        assert history["loss"] == ref_history["loss"]
        # the dropout generator moved on exactly as in the serial run
        assert model.generator.bit_generator.state == ref.generator.bit_generator.state


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_threads_equal_serial_and_train_in_place(data, serial, n_jobs):
    models = make_models()
    for m in models:
        m.threads = 2
    results = fit_many(models, data, n_jobs=n_jobs, **FIT)
    assert_same(results, serial)
    assert all(result[0] is model for result, model in zip(results, models))
    assert all(m.threads == 2 for m in models)  # restored after training


def test_thread_pool_executor(data, serial):
    with ThreadPoolExecutor(2) as pool:
        assert_same(fit_many(make_models(), data, executor=pool, **FIT), serial)


def test_joblib_processes_return_trained_copies(data, serial):
    pytest.importorskip("joblib")
    models = make_models()
    before = copy.deepcopy(models[0].params)
    results = fit_many(models, data, n_jobs=2, executor="processes", **FIT)
    assert_same(results, serial)
    assert results[0][0] is not models[0]
    for name, value in before.items():
        np.testing.assert_array_equal(models[0].params[name], value)


def test_process_pool_executor(data, serial):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert_same(fit_many(make_models(), data, executor=pool, **FIT), serial)


def test_per_model_data_and_arguments(data):
    x, y = data
    datasets = [(x[:6], y[:6]), (x[6:], y[6:])]
    models = make_models(2)
    expected = []
    for model, d, lr in zip(make_models(2), datasets, (0.01, 0.02)):
        cyrnn.fit(model, d, **dict(FIT, lr=lr))
        expected.append(model)
    results = fit_many(models, datasets, n_jobs=2, per_model=[{"lr": 0.01}, {"lr": 0.02}], **FIT)
    for (model, _), ref in zip(results, expected):
        for name in ref.params:
            np.testing.assert_array_equal(model.params[name], ref.params[name])


def test_callbacks_are_copied_per_model(data):
    stop = cyrnn.EarlyStopping(monitor="loss", patience=1)
    results = fit_many(make_models(2), data, n_jobs=2, callbacks=[stop], **dict(FIT, epochs=3))
    assert stop.best_epoch is None  # the caller's instance was not shared between runs
    assert all(len(history) >= 1 for _, history in results)


class LockedCallback(cyrnn.train.Callback):
    def __init__(self):
        self.lock = threading.Lock()


class LambdaCallback(cyrnn.train.Callback):
    def __init__(self):
        self.fn = lambda state: False


def test_unpicklable_callbacks_to_processes_fail_before_starting(data):
    with pytest.raises(TypeError, match="callbacks cannot be sent to a joblib process pool"):
        fit_many(make_models(2), data, executor="processes", callbacks=[LockedCallback()], **FIT)
    with ProcessPoolExecutor(1) as pool:
        with pytest.raises(TypeError, match="callbacks cannot be sent to a ProcessPoolExecutor"):
            fit_many(make_models(2), data, executor=pool, callbacks=[LambdaCallback()], **FIT)
    # threads need no pickling: the lambda is fine there
    fit_many(make_models(2), data, callbacks=[LambdaCallback()], **dict(FIT, epochs=1))


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="executor: expected one of threads, processes"):
        fit_many(make_models(1), data, executor="cluster")
    with pytest.raises(TypeError, match="executor: expected"):
        fit_many(make_models(1), data, executor=object())
    with pytest.raises(TypeError, match=r"models\[1\]: expected a cyrnn.RNN"):
        fit_many([make_models(1)[0], "model"], data)
    with pytest.raises(ValueError, match="per_model: expected 2 dicts"):
        fit_many(make_models(2), data, per_model=[{}])
    with pytest.raises(ValueError, match="n_jobs"):
        fit_many(make_models(2), data, n_jobs=0)
    assert fit_many([], data) == []


def test_worker_errors_propagate(data):
    x, y = data
    with pytest.raises(ValueError, match="targets"):
        fit_many(make_models(2), (x, y[:5]), n_jobs=2, **FIT)


# ---------------------------------------------------------------------------------------------
# pickling
# ---------------------------------------------------------------------------------------------


def test_model_pickles_compactly_without_the_backend(backend):
    model = cyrnn.RNN(5, 16, 5, num_layers=2, output="softmax", seed=0, backend=backend)
    model.vocab = cyrnn.Vocabulary("abcde")
    blob = pickle.dumps(model)
    assert b"cyrnn.kernels" not in blob and b"_rnn" not in blob
    nbytes = sum(p.nbytes for p in model.params.values())
    assert len(blob) < nbytes + 2000
    clone = pickle.loads(blob)
    assert clone.config() == model.config() and clone.vocab.chars == model.vocab.chars
    x = np.array([[0, 1, 2, 3]]).T
    np.testing.assert_array_equal(clone.forward(x)[0], model.forward(x)[0])
    assert clone.generator.random() == model.generator.random()


def test_optimizer_pickled_with_its_model_keeps_updating_it():
    model = cyrnn.RNN(3, 4, 2, seed=0)
    optimizer = cyrnn.optim.Adam(model.params, lr=0.1)
    model2, optimizer2 = pickle.loads(pickle.dumps((model, optimizer)))
    assert optimizer2.params is model2.params
    x, y = np.ones((2, 1, 3), np.float32), np.zeros((2, 1, 2), np.float32)
    before = model2.params["Why"].copy()
    optimizer2.step(model2.loss_and_grad(x, y)[1])
    assert not np.array_equal(model2.params["Why"], before)


def test_read_only_arrays_unpickle_writeable():
    model = cyrnn.RNN(3, 4, 2, seed=0)
    state = model.__getstate__()
    state["params"] = {k: np.frombuffer(v.tobytes(), v.dtype).reshape(v.shape)
                       for k, v in state["params"].items()}
    clone = cyrnn.RNN.__new__(cyrnn.RNN)
    clone.__setstate__(state)
    assert all(p.flags.writeable for p in clone.params.values())


# ---------------------------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_dask_fit_many_equals_serial(data, serial, dask_client):
    models = make_models()
    results = fit_many(models, data, executor=dask_client, **FIT)
    assert_same(results, serial)
    assert results[0][0] is not models[0]
    with pytest.raises(TypeError, match="callbacks cannot be sent to Dask workers"):
        fit_many(models, data, executor=dask_client, callbacks=[LockedCallback()], **FIT)


def test_dask_grid_search(dask_client):
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.model_selection import GridSearchCV

    from cyrnn.sklearn import RNNClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5, 2))
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    grid = {"cell": ["elman"], "hidden_size": [4, 8]}
    estimator = RNNClassifier(max_iter=5, random_state=0)
    with joblib.parallel_config(backend="dask"):
        on_dask = GridSearchCV(estimator, grid, cv=2, n_jobs=-1).fit(X, y)
    local = GridSearchCV(estimator, grid, cv=2, n_jobs=1).fit(X, y)
    assert on_dask.best_params_ == local.best_params_
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"],
                                  local.cv_results_["mean_test_score"])
