"""``fit`` and ``evaluate`` on stacked and bidirectional models: the loss drops, dropout is on
in training and off in evaluation, and a run is reproducible."""
import numpy as np
import pytest

import cyrnn

TEXT = ("the quick brown fox jumps over the lazy dog; "
        "pack my box with five dozen liquor jugs.\n") * 8


def _char_model(backend, **options):
    vocab = cyrnn.Vocabulary.from_text(TEXT)
    model = cyrnn.RNN(len(vocab), 24, len(vocab), output="softmax", seed=0, backend=backend,
                      **options)
    return model, vocab.encode(TEXT)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_two_layer_model_learns(backend, dropout):
    model, ids = _char_model(backend, num_layers=2, dropout=dropout)
    train, val = cyrnn.data.train_val_split(ids, 0.1)
    before = cyrnn.evaluate(model, val)
    history = cyrnn.fit(model, train, val, epochs=6, batch_size=4, seq_len=16,
                        optimizer="adam", lr=1e-2, clip_norm=5.0, seed=0)
    assert history["val_loss"][-1] < 0.8 * before
    assert history["val_loss"][-1] == pytest.approx(cyrnn.evaluate(model, val, batch_size=4))
    assert np.mean([s["loss"] for s in history.steps[-5:]]) < np.mean(
        [s["loss"] for s in history.steps[:5]])


def test_dropout_is_on_in_fit_and_off_in_evaluate(backend):
    """fit draws masks from the model's generator; evaluate (and forward) never do."""
    model, ids = _char_model(backend, num_layers=2, dropout=0.5)
    same, _ = _char_model(backend, num_layers=2, dropout=0.0)
    assert all((model.params[k] == same.params[k]).all() for k in model.params)
    assert cyrnn.evaluate(model, ids) == cyrnn.evaluate(same, ids)
    state = model.generator.bit_generator.state
    cyrnn.evaluate(model, ids)
    assert model.generator.bit_generator.state == state
    runs = {}
    for name, m in (("dropout", model), ("none", same)):
        runs[name] = cyrnn.fit(m, ids, epochs=1, steps=3, batch_size=4, seq_len=16, lr=1e-2,
                               seed=0)
    assert model.generator.bit_generator.state != state
    assert runs["dropout"].steps[0]["loss"] != runs["none"].steps[0]["loss"]


def test_a_stacked_run_is_reproducible(backend):
    results = []
    for _ in range(2):
        model, ids = _char_model(backend, num_layers=3, dropout=0.3)
        history = cyrnn.fit(model, ids, epochs=1, steps=4, batch_size=4, seq_len=12, seed=1)
        results.append(([s["loss"] for s in history.steps], model.params["Whh_l2"].copy()))
    assert results[0][0] == results[1][0]
    assert results[0][1].tobytes() == results[1][1].tobytes()


def test_bidirectional_fit_on_sequences(backend):
    """A many-to-one task that needs the whole sequence: the parity of the count of ones,
    target on the last step; a bidirectional 2-layer model with lengths."""
    rng = np.random.default_rng(0)
    n, T = 64, 6
    x = rng.integers(0, 2, (n, T)).astype(np.float32)[..., None]
    lengths = rng.integers(3, T + 1, n)
    for i, k in enumerate(lengths):
        x[i, k:] = 0
    y = (x[:, :, 0].sum(axis=1) > lengths / 2).astype(np.int64)  # majority of ones
    model = cyrnn.RNN(1, 12, 2, num_layers=2, bidirectional=True, output="softmax", seed=0,
                      backend=backend, batch_first=True)
    data = (x, y, lengths)
    before = cyrnn.evaluate(model, data, target_steps="last")
    history = cyrnn.fit(model, data, epochs=30, batch_size=16, lr=2e-2, seed=0,
                        target_steps="last")
    after = cyrnn.evaluate(model, data, target_steps="last")
    assert after < 0.7 * before
    assert history.steps[-1]["loss"] < history.steps[0]["loss"]
