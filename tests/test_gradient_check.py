"""``cyrnn.diagnostics.gradient_check``: central differences of the loss (or of the surrogate a
truncation differentiates) against ``loss_and_grad``, for every kind of model.

A correct gradient gives errors far below 1e-6; a gradient scaled by 1.01 gives about 1e-2.
"""
import itertools

import numpy as np
import pytest

import cyrnn
from cyrnn.diagnostics import gradient_check

T, B, I, H, O = 5, 2, 3, 3, 3
LENGTHS = np.array([5, 3])
TOLERANCE = 1e-6


def _data(tokens, target_steps="all", loss="cross_entropy", seed=0, width=O):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, I, (T, B)) if tokens else rng.normal(size=(T, B, I))
    steps = (T, B) if target_steps == "all" else (B,)
    target = rng.integers(0, width, steps) if loss == "cross_entropy" else rng.normal(size=steps + (width,))
    return x, target


def _assert_small(errors, model, x, input_grad=True):
    expected = list(model.params) + ["h0"] + (["x"] if x.dtype.kind == "f" and input_grad else [])
    assert list(errors) == expected
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, (worst, errors)


GRID = list(itertools.product(("tanh", "relu"), (True, False), (1, 2), (False, True)))


@pytest.mark.parametrize("nonlinearity, tokens, layers, bidirectional", GRID,
                         ids=[f"{n}-{'tok' if t else 'dense'}-L{l}{'-bi' if b else ''}"
                              for n, t, l, b in GRID])
@pytest.mark.parametrize("use_lengths, target_steps", [(False, "all"), (True, "all"),
                                                       (True, "last")],
                         ids=["full", "lengths", "lengths-last"])
def test_gradients_are_right(backend, nonlinearity, tokens, layers, bidirectional, use_lengths,
                             target_steps):
    model = cyrnn.RNN(I, H, O, num_layers=layers, bidirectional=bidirectional,
                      nonlinearity=nonlinearity, output="softmax", seed=1, backend=backend)
    x, target = _data(tokens, target_steps)
    h0 = np.random.default_rng(2).normal(scale=0.5, size=(layers * (1 + bidirectional), B, H))
    errors = gradient_check(model, x, target, h0=h0, lengths=LENGTHS if use_lengths else None,
                            target_steps=target_steps)
    _assert_small(errors, model, x)


TRUNCATIONS = [2, cyrnn.TBPTT(2, 3), cyrnn.TBPTT(2, 2), cyrnn.RandomizedTruncation(0.5, seed=4)]


@pytest.mark.parametrize("truncate", TRUNCATIONS, ids=["k2", "tbptt23", "tbptt22", "random"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
def test_truncated_gradients_of_stacks_are_right(backend, truncate, bidirectional, use_lengths):
    """A truncated gradient against the derivative of the surrogate it differentiates, per
    layer-direction in its own processing order."""
    model = cyrnn.RNN(I, H, O, num_layers=2, bidirectional=bidirectional, output="softmax",
                      seed=3, backend=backend)
    x, target = _data(False)
    errors = gradient_check(model, x, target, truncate=truncate,
                            lengths=LENGTHS if use_lengths else None)
    _assert_small(errors, model, x)


def test_truncation_is_not_checked_against_the_loss(backend):
    """The truncated gradient differs from full BPTT by far more than the tolerance, so the
    check above does test the surrogate."""
    model = cyrnn.RNN(I, H, O, num_layers=2, output="softmax", seed=3, backend=backend)
    x, target = _data(False)
    full = model.loss_and_grad(x, target)[1]
    cut = model.loss_and_grad(x, target, truncate=1)[1]
    assert np.abs(full["Whh"] - cut["Whh"]).max() > 1e-3 * np.abs(full["Whh"]).max()


@pytest.mark.parametrize("truncate", [None, 2, cyrnn.TBPTT(2, 2)], ids=["full", "k2", "tbptt22"])
def test_dropout_with_a_seed(backend, truncate):
    model = cyrnn.RNN(I, H, O, num_layers=3, bidirectional=True, dropout=0.4, output="softmax",
                      seed=5, backend=backend)
    x, target = _data(False)
    state = model.generator.bit_generator.state
    errors = gradient_check(model, x, target, dropout_seed=7, truncate=truncate,
                            lengths=LENGTHS)
    _assert_small(errors, model, x)
    assert model.generator.bit_generator.state == state  # the model's own masks untouched
    # a generator works too: it is copied for every evaluation
    errors = gradient_check(model, x, target, dropout_seed=np.random.default_rng(7))
    _assert_small(errors, model, x)


def test_dropout_without_a_seed_is_refused(backend):
    model = cyrnn.RNN(I, H, O, num_layers=2, dropout=0.5, output="softmax", seed=5,
                      backend=backend)
    x, target = _data(True)
    with pytest.raises(ValueError, match="dropout_seed: a model with dropout between layers"):
        gradient_check(model, x, target)
    # one layer: dropout has nothing to act on, nothing is drawn
    single = cyrnn.RNN(I, H, O, dropout=0.5, output="softmax", seed=5, backend=backend)
    _assert_small(gradient_check(single, x, target), single, x)


@pytest.mark.parametrize("options, loss", [
    ({"output": "linear"}, "mse"),
    ({"output_size": None, "bidirectional": False}, "mse"),
    ({"output_size": None}, "mse"),
    ({"output": "sigmoid", "nonlinearity": "sigmoid"}, "bce"),
    ({"output_size": None, "bidirectional": False, "nonlinearity": "leaky_relu",
      "negative_slope": 0.2}, "mse"),
    ({"batch_first": True, "init": "orthogonal"}, "mse"),
    ({"dtype": "float32"}, "mse"),
])
def test_other_models(backend, options, loss):
    options = {"output_size": O, "bidirectional": True, **options}
    model = cyrnn.RNN(I, H, options.pop("output_size"), num_layers=2, seed=6, backend=backend,
                      **options)
    width = model.output_size or model.architecture.top_size
    x, target = _data(False, loss=loss, width=width)
    if loss == "bce":
        target = 1 / (1 + np.exp(-target))
    if model.batch_first:
        x, target = x.swapaxes(0, 1), target.swapaxes(0, 1)
    params = {k: v.copy() for k, v in model.params.items()}
    errors = gradient_check(model, x, target, reduction="sum")
    _assert_small(errors, model, x)
    assert all(model.params[k].tobytes() == v.tobytes() for k, v in params.items())


def test_unbatched_and_without_input_gradient(backend):
    model = cyrnn.RNN(I, H, O, num_layers=2, output="softmax", seed=8, backend=backend)
    x, target = _data(False)
    errors = gradient_check(model, x[:, 0], target[:, 0], input_grad=False)
    _assert_small(errors, model, x, input_grad=False)


class _WrongWhh(cyrnn.RNN):
    """A model whose gradient of one parameter is 1% too large."""

    wrong = "Whh_l1"

    def loss_and_grad(self, *args, **kwargs):
        value, grads, h_last = super().loss_and_grad(*args, **kwargs)
        grads[self.wrong] = grads[self.wrong] * 1.01
        return value, grads, h_last


@pytest.mark.parametrize("wrong", ["Whh_l1", "Wxh_reverse", "by"])
def test_a_wrong_gradient_is_found(backend, wrong):
    # the check copies the model with type(model).from_params: the class carries the defect
    wrong_class = type("Wrong", (_WrongWhh,), {"wrong": wrong})
    model = wrong_class(I, H, O, num_layers=2, bidirectional=True, output="softmax", seed=9,
                        backend=backend)
    x, target = _data(True)
    errors = gradient_check(model, x, target)
    assert errors[wrong] == pytest.approx(0.01 / 1.01, rel=1e-3)
    assert max(e for name, e in errors.items() if name != wrong) < TOLERANCE


def test_arguments_are_checked():
    model = cyrnn.RNN(I, H, O, output="softmax", seed=0)
    x, target = _data(True)
    with pytest.raises(TypeError, match=r"unexpected arguments \['dropout'\]"):
        gradient_check(model, x, target, dropout=0.5)
    for eps in (0, -1e-6, float("nan"), "1e-6", True):
        with pytest.raises(ValueError, match="eps: expected a finite number > 0"):
            gradient_check(model, x, target, eps=eps)
    assert max(gradient_check(model, x, target, eps=1e-5).values()) < 1e-5
