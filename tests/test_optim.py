"""Tests of ``cyrnn.optim``: update rules against hand computation and ``torch.optim``, weight
decay, schedules, state save / restore, in-place float32 updates and argument checks.

Expected values are written from the update formulas (literal numbers or scalar Python
arithmetic in this file), independently of the implementation.
"""
import json
import math
import tracemalloc

import numpy as np
import pytest

from cyrnn import RNN
from cyrnn.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    CosineLR,
    ExponentialLR,
    Optimizer,
    RMSprop,
    StepLR,
    make_optimizer,
)

DTYPES = (np.float32, np.float64)
# shapes of a small RNN's parameters (H=4, I=3, O=2)
SHAPES = {"Wxh": (4, 3), "Whh": (4, 4), "bh": (4,), "Why": (2, 4), "by": (2,)}
# agreement with an independent float64 computation, per parameter dtype
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-13, atol=1e-14)}
# agreement with torch.optim over 20 steps
TORCH_TOL = {np.float32: dict(rtol=1e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}

# one configuration per optimizer that exercises its optional paths (L2 / decoupled decay, momentum)
CONFIGS = {
    "sgd": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adagrad": dict(lr=0.1, eps=1e-3, initial_accumulator=0.1, weight_decay=0.01),
    "rmsprop": dict(lr=0.01, alpha=0.9, eps=1e-6, momentum=0.5, weight_decay=0.01),
    "adam": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
    "adamw": dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
}


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def make_grads(dtype, n, seed=1):
    """``n`` gradient dicts like ``RNN.loss_and_grad``'s, with input gradients "h0" and "x"."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
        g["h0"] = rng.standard_normal((2, 4)).astype(dtype)
        g["x"] = rng.standard_normal((5, 2, 3)).astype(dtype)
        out.append(g)
    return out


def copy_dict(d):
    return {k: v.copy() for k, v in d.items()}


# -------------------------------------------------------------------------------------------
# first updates against hand-computed numbers
# -------------------------------------------------------------------------------------------

P0 = [1.0, -2.0]
G = [[0.5, -1.0], [0.25, 2.0], [-1.0, 0.5]]


def run_tiny(opt_cls, dtype, n, **kwargs):
    """Parameters after each of ``n`` updates of ``P0`` with the gradients ``G``."""
    params = {"w": np.array(P0, dtype=dtype)}
    opt = opt_cls(params, **kwargs)
    history = []
    for g in G[:n]:
        opt.step({"w": np.array(g, dtype=dtype)})
        history.append(params["w"].astype(np.float64))
    return history


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # p <- p - 0.1 g
        (dict(lr=0.1), [[0.95, -1.9], [0.925, -2.1], [1.025, -2.15]]),
        # b1 = g1, b2 = 0.9 b1 + g2 = [0.7, 1.1], b3 = 0.9 b2 + g3 = [-0.37, 1.49]
        (dict(lr=0.1, momentum=0.9), [[0.95, -1.9], [0.88, -2.01], [0.917, -2.159]]),
        # direction = g + 0.9 b: [0.95, -1.9], [0.88, 2.99]
        (dict(lr=0.1, momentum=0.9, nesterov=True), [[0.905, -1.81], [0.817, -2.109]]),
        # PyTorch: no dampening on the first update; b2 = 0.9 g1 + 0.5 g2 = [0.575, 0.1]
        (dict(lr=0.1, momentum=0.9, dampening=0.5), [[0.95, -1.9], [0.8925, -1.91]]),
        # L2: g1 + 0.1 p0 = [0.6, -1.2]; g2 + 0.1 p1 = [0.344, 1.812]
        (dict(lr=0.1, weight_decay=0.1), [[0.94, -1.88], [0.9056, -2.0612]]),
    ],
    ids=["plain", "momentum", "nesterov", "dampening", "weight_decay"],
)
def test_sgd_hand_computed(dtype, kwargs, expected):
    history = run_tiny(SGD, dtype, len(expected), **kwargs)
    np.testing.assert_allclose(history, expected, **TOL[dtype])


def test_adagrad_eps_inside_sqrt(dtype):
    # s1 = g1^2 = [0.25, 1]; sqrt(s1 + 0.75) = [1, sqrt(1.75)]. With eps outside the root
    # (PyTorch) the first entry would be 1 - 0.1 * 0.5 / (0.5 + 0.75) = 0.96 instead of 0.95.
    (p1,) = run_tiny(Adagrad, dtype, 1, lr=0.1, eps=0.75)
    np.testing.assert_allclose(p1, [0.95, -2.0 + 0.1 / math.sqrt(1.75)], **TOL[dtype])


# scalar references of the rules, for the first updates of every optimizer


def ref_adagrad(lr, eps, init, wd):
    p, s, out = list(P0), [init, init], []
    for g in G:
        for i in range(2):
            gi = g[i] + wd * p[i]
            s[i] += gi * gi
            p[i] -= lr * gi / math.sqrt(s[i] + eps)
        out.append(list(p))
    return out


def ref_rmsprop(lr, alpha, eps, momentum, wd):
    p, v, b, out = list(P0), [0.0, 0.0], [0.0, 0.0], []
    for g in G:
        for i in range(2):
            gi = g[i] + wd * p[i]
            v[i] = alpha * v[i] + (1 - alpha) * gi * gi
            u = gi / (math.sqrt(v[i]) + eps)
            if momentum:
                b[i] = momentum * b[i] + u
                u = b[i]
            p[i] -= lr * u
        out.append(list(p))
    return out


def ref_adam(lr, b1, b2, eps, wd, decoupled):
    p, m, v, out = list(P0), [0.0, 0.0], [0.0, 0.0], []
    for t, g in enumerate(G, start=1):
        for i in range(2):
            gi = g[i]
            if decoupled:
                p[i] -= lr * wd * p[i]
            else:
                gi += wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            mhat, vhat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p[i] -= lr * mhat / (math.sqrt(vhat) + eps)
        out.append(list(p))
    return out


@pytest.mark.parametrize(
    "cls, kwargs, expected",
    [
        (Adagrad, dict(lr=0.1, eps=1e-8), ref_adagrad(0.1, 1e-8, 0.0, 0.0)),
        (Adagrad, dict(lr=0.1, eps=0.0, initial_accumulator=0.5, weight_decay=0.1),
         ref_adagrad(0.1, 0.0, 0.5, 0.1)),
        (RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-8), ref_rmsprop(0.01, 0.9, 1e-8, 0.0, 0.0)),
        (RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-3, momentum=0.5, weight_decay=0.1),
         ref_rmsprop(0.01, 0.9, 1e-3, 0.5, 0.1)),
        (Adam, dict(lr=0.1), ref_adam(0.1, 0.9, 0.999, 1e-8, 0.0, False)),
        (Adam, dict(lr=0.1, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.1),
         ref_adam(0.1, 0.5, 0.9, 1e-3, 0.1, False)),
        (AdamW, dict(lr=0.1, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.1),
         ref_adam(0.1, 0.5, 0.9, 1e-3, 0.1, True)),
    ],
    ids=["adagrad", "adagrad-l2", "rmsprop", "rmsprop-momentum-l2", "adam", "adam-l2", "adamw"],
)
def test_three_updates_match_scalar_reference(dtype, cls, kwargs, expected):
    history = run_tiny(cls, dtype, 3, **kwargs)
    np.testing.assert_allclose(history, expected, **TOL[dtype])


def test_adam_first_step_is_lr_times_sign(dtype):
    # after bias correction the first Adam step is lr * g / (|g| + eps)
    (p1,) = run_tiny(Adam, dtype, 1, lr=0.1, eps=0.0)
    np.testing.assert_allclose(p1, [0.9, -1.9], **TOL[dtype])


# -------------------------------------------------------------------------------------------
# weight decay
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SGD, Adagrad, RMSprop, Adam, AdamW])
def test_zero_weight_decay_means_none(dtype, cls):
    a, b = make_params(dtype), make_params(dtype)
    opt_a, opt_b = cls(a, lr=0.01), cls(b, lr=0.01, weight_decay=0.0)
    for g in make_grads(dtype, 3):
        opt_a.step(g)
        opt_b.step(g)
    if cls is AdamW:  # AdamW decays by default (0.01): the results must differ
        assert not np.array_equal(a["Whh"], b["Whh"])
    else:
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_sgd_weight_decay_with_zero_gradient_shrinks(dtype):
    params = make_params(dtype)
    before = copy_dict(params)
    SGD(params, lr=0.1, weight_decay=0.5).step({k: np.zeros_like(v) for k, v in params.items()})
    for k in params:
        np.testing.assert_allclose(params[k], before[k] * (1 - 0.1 * 0.5), **TOL[dtype])


def test_adamw_decay_is_decoupled(dtype):
    # zero gradient: Adam's step is 0 / (0 + eps) = 0, so only the decay p <- p (1 - lr wd) acts
    params = make_params(dtype)
    before = copy_dict(params)
    AdamW(params, lr=0.1, weight_decay=0.5).step({k: np.zeros_like(v) for k, v in params.items()})
    for k in params:
        np.testing.assert_allclose(params[k], before[k] * (1 - 0.1 * 0.5), **TOL[dtype])


def test_adam_weight_decay_is_l2(dtype):
    # zero gradient: the L2 gradient wd * p goes through Adam, whose first step is lr * sign
    params = make_params(dtype)
    before = copy_dict(params)
    Adam(params, lr=0.1, eps=0.0, weight_decay=0.5).step(
        {k: np.zeros_like(v) for k, v in params.items()}
    )
    for k in params:
        np.testing.assert_allclose(params[k], before[k] - 0.1 * np.sign(before[k]), **TOL[dtype])


# -------------------------------------------------------------------------------------------
# against torch.optim
# -------------------------------------------------------------------------------------------

TORCH_CASES = [
    ("sgd-momentum", "SGD", dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9)),
    ("sgd-nesterov-l2", "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd-dampening", "SGD", dict(lr=0.05, momentum=0.8, dampening=0.3),
     dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("rmsprop", "RMSprop", dict(lr=0.01), dict(lr=0.01, eps=1e-8)),
    ("rmsprop-momentum-l2", "RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01),
     dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.5, weight_decay=0.01)),
    ("adam", "Adam", dict(lr=0.01), dict(lr=0.01)),
    ("adam-l2", "Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("adamw", "AdamW", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    # eps inside the root: sqrt(s + eps) with s from a is PyTorch's sqrt(s') + 0 with s' from a+eps
    ("adagrad", "Adagrad", dict(lr=0.1, eps=1e-3, initial_accumulator=0.1, weight_decay=0.01),
     dict(lr=0.1, eps=0.0, initial_accumulator_value=0.1 + 1e-3, weight_decay=0.01)),
]


def run_torch(torch_cls_name, torch_kwargs, params, grad_seq, scheduler=None):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = getattr(torch.optim, torch_cls_name)(list(tensors.values()), **torch_kwargs)
    sched = scheduler(opt) if scheduler else None
    for grads in grad_seq:
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
        if sched is not None:
            sched.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_optim(dtype, case):
    pytest.importorskip("torch")
    _, cls_name, ours, theirs = case
    params = make_params(dtype)
    grad_seq = make_grads(dtype, 20)
    expected = run_torch(cls_name, theirs, params, grad_seq)
    opt = make_optimizer(cls_name, params, **ours)
    for grads in grad_seq:
        opt.step(grads)
    for k in params:
        assert params[k].dtype == dtype
        np.testing.assert_allclose(params[k], expected[k], **TORCH_TOL[dtype], err_msg=k)


def test_adagrad_differs_from_torch_eps_placement():
    """With the same eps, min-char-rnn's Adagrad and PyTorch's must differ (eps is large here)."""
    pytest.importorskip("torch")
    params = make_params(np.float64)
    grad_seq = make_grads(np.float64, 3)
    theirs = run_torch("Adagrad", dict(lr=0.1, eps=0.5), params, grad_seq)
    opt = Adagrad(params, lr=0.1, eps=0.5)
    for grads in grad_seq:
        opt.step(grads)
    assert np.abs(params["Whh"] - theirs["Whh"]).max() > 1e-3


def test_schedule_matches_torch_scheduler(dtype):
    torch = pytest.importorskip("torch")
    params = make_params(dtype)
    grad_seq = make_grads(dtype, 20)
    expected = run_torch(
        "SGD", dict(lr=0.1, momentum=0.9), params, grad_seq,
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
    )
    opt = SGD(params, lr=0.1, momentum=0.9, schedule=StepLR(4, gamma=0.5))
    for grads in grad_seq:
        opt.step(grads)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], **TORCH_TOL[dtype], err_msg=k)


def test_schedule_factors_match_torch_schedulers():
    torch = pytest.importorskip("torch")
    sched = torch.optim.lr_scheduler
    cases = [
        (StepLR(3, gamma=0.5), lambda o: sched.StepLR(o, step_size=3, gamma=0.5), 12),
        (ExponentialLR(0.9), lambda o: sched.ExponentialLR(o, gamma=0.9), 12),
        # torch's cosine rises again after T_max; ours stays: compare up to total_steps
        (CosineLR(10, min_factor=0.1), lambda o: sched.CosineAnnealingLR(o, T_max=10, eta_min=0.1), 10),
    ]
    for ours, make_theirs, n in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        theirs = make_theirs(opt)
        for step in range(n + 1):
            assert ours(step) == pytest.approx(theirs.get_last_lr()[0], rel=1e-12, abs=1e-15), (ours, step)
            opt.step()
            theirs.step()


# -------------------------------------------------------------------------------------------
# schedules
# -------------------------------------------------------------------------------------------


def test_step_lr_values():
    s = StepLR(3, gamma=0.5)
    assert [s(k) for k in range(8)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_exponential_lr_values():
    s = ExponentialLR(0.9)
    assert s(0) == 1.0
    assert s(1) == pytest.approx(0.9, rel=1e-15)
    assert s(3) == pytest.approx(0.729, rel=1e-15)


def test_cosine_lr_values():
    s = CosineLR(10, min_factor=0.1)
    assert s(0) == 1.0
    # 0.1 + 0.9 * (1 + cos(0.2 pi)) / 2, cos(0.2 pi) = 0.80901699437494745
    assert s(2) == pytest.approx(0.9140576474687264, rel=1e-14)
    assert s(5) == pytest.approx(0.55, rel=1e-14)
    assert s(10) == 0.1
    assert s(11) == 0.1  # stays (PyTorch's CosineAnnealingLR would rise again)
    assert s(25) == 0.1
    assert CosineLR(4)(4) == 0.0


def test_optimizer_applies_schedule_from_step_zero(dtype):
    # lr 0.1 halved every update: updates use 0.1, 0.05, 0.025
    params = {"w": np.zeros(2, dtype=dtype)}
    opt = SGD(params, lr=0.1, schedule=StepLR(1, gamma=0.5))
    assert opt.lr == 0.1 and opt.base_lr == 0.1
    for _ in range(3):
        opt.step({"w": np.ones(2, dtype=dtype)})
    np.testing.assert_allclose(params["w"], [-0.175, -0.175], **TOL[dtype])
    assert opt.steps == 3
    assert opt.lr == pytest.approx(0.0125, rel=1e-15)
    assert opt.base_lr == 0.1


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: StepLR(0), ValueError, r"step_size: expected an integer >= 1, got 0"),
        (lambda: StepLR(1.5), TypeError, r"step_size: expected an integer"),
        (lambda: StepLR(2, gamma=0.0), ValueError, r"gamma: expected a finite number > 0"),
        (lambda: ExponentialLR(-0.5), ValueError, r"gamma: expected a finite number > 0"),
        (lambda: ExponentialLR(float("nan")), ValueError, r"gamma"),
        (lambda: ExponentialLR("0.9"), TypeError, r"gamma: expected a number"),
        (lambda: CosineLR(0), ValueError, r"total_steps: expected an integer >= 1"),
        (lambda: CosineLR(10, min_factor=1.5), ValueError, r"min_factor: expected a finite number >= 0 and <= 1"),
        (lambda: CosineLR(10)(-1), ValueError, r"step: expected an integer >= 0, got -1"),
        (lambda: StepLR(2)(1.0), TypeError, r"step: expected an integer"),
    ],
)
def test_schedule_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_schedule_output_raises_and_updates_nothing():
    params = make_params(np.float64)
    before = copy_dict(params)
    opt = SGD(params, lr=0.1, schedule=lambda step: -1.0)
    with pytest.raises(ValueError, match=r"schedule: expected a finite factor >= 0 at step 0"):
        opt.step(make_grads(np.float64, 1)[0])
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert opt.steps == 0


# -------------------------------------------------------------------------------------------
# in place, dtype, no mutation of the gradients, input gradients ignored
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("grad_dtype", DTYPES, ids=["grads32", "grads64"])
def test_in_place_dtype_kept_grads_untouched(dtype, name, grad_dtype):
    params = make_params(dtype)
    ids = {k: id(v) for k, v in params.items()}
    before = copy_dict(params)
    opt = make_optimizer(name, params, **CONFIGS[name])
    assert opt.params is params
    for grads in make_grads(grad_dtype, 3):
        saved = copy_dict(grads)
        opt.step(grads)
        for k in grads:
            np.testing.assert_array_equal(grads[k], saved[k], err_msg=k)
            assert grads[k].dtype == saved[k].dtype
    for k, v in params.items():
        assert id(v) == ids[k]
        assert v.dtype == dtype
        assert not np.array_equal(v, before[k]), k
    assert opt.steps == 3


def test_float64_grads_into_float32_params_match_float32_grads():
    # gradients are cast to the parameter dtype first, then the arithmetic is float32
    a, b = make_params(np.float32), make_params(np.float32)
    opt_a, opt_b = Adam(a, lr=0.01, weight_decay=0.1), Adam(b, lr=0.01, weight_decay=0.1)
    for grads in make_grads(np.float64, 3):
        opt_a.step(grads)
        opt_b.step({k: v.astype(np.float32) for k, v in grads.items()})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("grad_dtype", DTYPES, ids=["grads32", "grads64"])
def test_float32_steps_allocate_no_full_size_temporaries(name, grad_dtype):
    """After the first step (which may warm up), a step on a float32 parameter of n elements
    allocates less than 2n bytes: no float32 (4n) or float64 (8n) copy, only the boolean
    finiteness mask (n) -- also when the gradient is float64."""
    n = 1_000_000
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((1000, 1000)).astype(np.float32)}
    grads = {"W": rng.standard_normal((1000, 1000)).astype(grad_dtype)}
    opt = make_optimizer(name, params, **CONFIGS[name])
    opt.step(grads)
    tracemalloc.start()
    try:
        _ = params["W"] * 2.0  # control: the measurement sees a float32 temporary
        control = tracemalloc.get_traced_memory()[1]
        del _
        tracemalloc.reset_peak()
        opt.step(grads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert control >= 4 * n
    assert peak < 2 * n, f"{name}: a float32 step allocated {peak} bytes for {n} elements"
    assert params["W"].dtype == np.float32


def test_input_gradients_and_extra_keys_are_ignored(dtype):
    params = make_params(dtype)
    a, b = copy_dict(params), copy_dict(params)
    opt_a, opt_b = Adam(a), Adam(b)
    grads = make_grads(dtype, 1)[0]
    plain = {k: grads[k] for k in SHAPES}
    noisy = dict(plain, h0=np.full((2, 4), np.nan, dtype), x=np.array([np.inf]), other="not an array")
    opt_a.step(plain)
    opt_b.step(noisy)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_trains_an_rnn(dtype):
    """End to end: Adam on RNN.loss_and_grad's gradients (which include "h0" and "x") lowers
    the loss of a fixed batch."""
    rng = np.random.default_rng(3)
    model = RNN(3, 8, 2, dtype=dtype, seed=0)
    x = rng.standard_normal((6, 4, 3))
    target = rng.standard_normal((6, 4, 2))
    opt = Adam(model.params, lr=0.05)
    first = None
    for _ in range(40):
        loss, grads, _ = model.loss_and_grad(x, target)
        assert "h0" in grads and "x" in grads
        first = loss if first is None else first
        opt.step(grads)
    last, _, _ = model.loss_and_grad(x, target)
    assert last < 0.7 * first
    assert all(p.dtype == dtype for p in model.params.values())


# -------------------------------------------------------------------------------------------
# bad gradients
# -------------------------------------------------------------------------------------------


def test_missing_gradient_raises_key_error():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    del grads["Whh"]
    with pytest.raises(KeyError, match=r"Whh"):
        SGD(params, lr=0.1).step(grads)


def test_wrong_gradient_shape_raises():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    grads["by"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"grads\['by'\]: expected shape \(2,\)"):
        SGD(params, lr=0.1).step(grads)


def test_non_array_gradient_dtype_raises():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    grads["bh"] = np.array(["a"] * 4)
    with pytest.raises(TypeError, match=r"grads\['bh'\]"):
        SGD(params, lr=0.1).step(grads)
    with pytest.raises(TypeError, match=r"grads: expected a dict"):
        SGD(params, lr=0.1).step([1, 2])


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_updates_nothing(dtype, name, bad):
    params = make_params(dtype)
    opt = make_optimizer(name, params, **CONFIGS[name])
    good = make_grads(dtype, 2)
    opt.step(good[0])
    before_params, before_state = copy_dict(params), opt.state_dict()
    grads = good[1]
    grads["by"] = grads["by"].copy()
    grads["by"][1] = bad  # the last parameter: every other one would be updated before it
    with pytest.raises(FloatingPointError, match=r"grads\['by'\]: non-finite"):
        opt.step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], before_params[k], err_msg=k)
    assert opt.steps == 1
    after_state = opt.state_dict()
    for k, v in before_state["buffers"].items():
        np.testing.assert_array_equal(after_state["buffers"][k], v, err_msg=k)


def test_replaced_parameter_of_other_shape_raises():
    params = make_params(np.float64)
    opt = SGD(params, lr=0.1)
    params["Whh"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"params\['Whh'\]"):
        opt.step(make_grads(np.float64, 1)[0])


# -------------------------------------------------------------------------------------------
# argument checks
# -------------------------------------------------------------------------------------------

P = {"w": np.zeros(3)}


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: SGD(P, lr=-1), ValueError, r"^lr: expected a finite number > 0, got -1$"),
        (lambda: SGD(P, lr=0), ValueError, r"lr: expected a finite number > 0"),
        (lambda: SGD(P, lr=float("inf")), ValueError, r"lr: expected a finite number > 0"),
        (lambda: SGD(P, lr="0.1"), TypeError, r"lr: expected a number, got '0.1'"),
        (lambda: SGD(P, lr=True), TypeError, r"lr: expected a number"),
        (lambda: SGD(P, lr=0.1, momentum=1.0), ValueError, r"momentum: expected a finite number >= 0 and < 1"),
        (lambda: SGD(P, lr=0.1, momentum=-0.1), ValueError, r"momentum"),
        (lambda: SGD(P, lr=0.1, dampening=1.5), ValueError, r"dampening"),
        (lambda: SGD(P, lr=0.1, nesterov=True), ValueError, r"nesterov: needs momentum > 0"),
        (lambda: SGD(P, lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), ValueError, r"nesterov"),
        (lambda: SGD(P, lr=0.1, nesterov="yes"), TypeError, r"nesterov: expected a bool"),
        (lambda: SGD(P, lr=0.1, weight_decay=-1e-4), ValueError, r"weight_decay: expected a finite number >= 0"),
        (lambda: SGD(P, lr=0.1, schedule=0.5), TypeError, r"schedule: expected a callable"),
        (lambda: SGD(P, 0.1, 0.9), TypeError, r"positional"),
        (lambda: Adagrad(P, eps=-1e-8), ValueError, r"eps: expected a finite number >= 0"),
        (lambda: Adagrad(P, eps=0.0), ValueError, r"eps: expected a number > 0 when initial_accumulator is 0"),
        (lambda: Adagrad(P, initial_accumulator=-1), ValueError, r"initial_accumulator"),
        (lambda: RMSprop(P, alpha=1.0), ValueError, r"alpha: expected a finite number >= 0 and < 1"),
        (lambda: RMSprop(P, eps=float("nan")), ValueError, r"eps"),
        (lambda: RMSprop(P, momentum=2), ValueError, r"momentum"),
        (lambda: Adam(P, betas=(0.9,)), TypeError, r"betas: expected a pair"),
        (lambda: Adam(P, betas=0.9), TypeError, r"betas: expected a pair"),
        (lambda: Adam(P, betas=(0.9, 1.0)), ValueError, r"betas\[1\]: expected a finite number >= 0 and < 1"),
        (lambda: Adam(P, betas=(-0.1, 0.9)), ValueError, r"betas\[0\]"),
        (lambda: Adam(P, eps=-1), ValueError, r"eps"),
        (lambda: AdamW(P, weight_decay=-0.01), ValueError, r"weight_decay"),
        (lambda: Adam({}, lr=0.1), ValueError, r"params: expected at least one parameter"),
        (lambda: Adam([np.zeros(3)]), TypeError, r"params: expected a dict"),
        (lambda: Adam({"w": [0.0, 1.0]}), TypeError, r"params\['w'\]: expected a numpy.ndarray"),
        (lambda: Adam({"w": np.zeros(3, dtype=int)}), TypeError, r"params\['w'\]: expected a floating dtype"),
    ],
)
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_read_only_parameter_rejected():
    w = np.zeros(3)
    w.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['w'\]: the array is read-only"):
        SGD({"w": w}, lr=0.1)


def test_make_optimizer():
    params = make_params(np.float64)
    for name, cls in OPTIMIZERS.items():
        opt = make_optimizer(name, params, lr=0.5)
        assert type(opt) is cls and opt.base_lr == 0.5 and opt.params is params
    assert type(make_optimizer("AdamW", params)) is AdamW
    assert set(OPTIMIZERS) == {"sgd", "adagrad", "rmsprop", "adam", "adamw"}
    with pytest.raises(ValueError, match=r"name: expected one of sgd, adagrad, rmsprop, adam, adamw, got 'adamax'"):
        make_optimizer("adamax", params)
    with pytest.raises(TypeError, match=r"name: expected a string"):
        make_optimizer(Adam, params)
    with pytest.raises(TypeError, match=r"momentum"):
        make_optimizer("adam", params, momentum=0.9)


def test_base_class_has_no_rule():
    opt = Optimizer({"w": np.zeros(2)}, lr=0.1)
    with pytest.raises(NotImplementedError):
        opt.step({"w": np.ones(2)})


# -------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# -------------------------------------------------------------------------------------------

BUFFERS = {
    "sgd": {"momentum_buffer"},
    "adagrad": {"sum"},
    "rmsprop": {"square_avg", "momentum_buffer"},
    "adam": {"exp_avg", "exp_avg_sq"},
    "adamw": {"exp_avg", "exp_avg_sq"},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_format(dtype, name):
    params = make_params(dtype)
    opt = make_optimizer(name, params, **CONFIGS[name])
    opt.step(make_grads(dtype, 1)[0])
    state = opt.state_dict()
    assert set(state) == {"type", "config", "steps", "buffers"}
    assert state["type"] == type(opt).__name__ and OPTIMIZERS[name] is type(opt)
    assert state["steps"] == 1
    assert json.loads(json.dumps(state["config"])) == state["config"]
    assert state["config"]["lr"] == CONFIGS[name]["lr"]
    assert set(state["buffers"]) == {f"{b}/{p}" for b in BUFFERS[name] for p in SHAPES}
    for key, arr in state["buffers"].items():
        assert arr.shape == SHAPES[key.split("/", 1)[1]] and arr.dtype == dtype
    # copies: changing the saved state does not change the optimizer
    key = next(iter(state["buffers"]))
    state["buffers"][key] += 1.0
    assert not np.array_equal(opt.state_dict()["buffers"][key], state["buffers"][key])


def test_sgd_without_momentum_has_no_buffers():
    state = SGD(make_params(np.float64), lr=0.1).state_dict()
    assert state["buffers"] == {}
    assert state["config"] == dict(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_restore_continues_bit_identically(dtype, name, tmp_path):
    """20 uninterrupted updates == 10 updates, save (JSON + npz), restore into a fresh optimizer
    built with other hyperparameters, 10 updates."""
    grad_seq = make_grads(dtype, 20)
    schedule = lambda: CosineLR(20, min_factor=0.2)  # noqa: E731  (passed again on restore)

    ref = make_params(dtype)
    opt_ref = make_optimizer(name, ref, schedule=schedule(), **CONFIGS[name])
    for grads in grad_seq:
        opt_ref.step(grads)

    params = make_params(dtype)
    opt = make_optimizer(name, params, schedule=schedule(), **CONFIGS[name])
    for grads in grad_seq[:10]:
        opt.step(grads)
    state = opt.state_dict()
    (tmp_path / "optim.json").write_text(
        json.dumps({k: state[k] for k in ("type", "config", "steps")})
    )
    np.savez(tmp_path / "optim.npz", **state["buffers"])
    np.savez(tmp_path / "params.npz", **params)
    del opt, params, state

    with np.load(tmp_path / "params.npz") as f:
        params = {k: f[k] for k in f.files}
    meta = json.loads((tmp_path / "optim.json").read_text())
    restored = make_optimizer(meta["type"], params, lr=123.0, schedule=schedule())
    with np.load(tmp_path / "optim.npz") as f:
        restored.load_state_dict(dict(meta, buffers=f))
    assert restored.steps == 10 and restored.base_lr == CONFIGS[name]["lr"]
    assert restored.params is params
    for grads in grad_seq[10:]:
        restored.step(grads)

    for k in ref:
        assert params[k].dtype == dtype
        np.testing.assert_array_equal(params[k], ref[k], err_msg=k)
    final, final_ref = restored.state_dict(), opt_ref.state_dict()
    assert final["config"] == final_ref["config"] and final["steps"] == 20
    for k in final_ref["buffers"]:
        np.testing.assert_array_equal(final["buffers"][k], final_ref["buffers"][k], err_msg=k)


def test_load_keeps_parameter_arrays():
    params = make_params(np.float64)
    ids = {k: id(v) for k, v in params.items()}
    opt = Adam(params)
    opt.load_state_dict(Adam(make_params(np.float64, seed=5)).state_dict())
    assert opt.params is params and {k: id(v) for k, v in params.items()} == ids


def _adam_state():
    opt = Adam(make_params(np.float64), lr=0.01)
    opt.step(make_grads(np.float64, 1)[0])
    return opt.state_dict()


def _edit(change):
    state = _adam_state()
    change(state)
    return state


@pytest.mark.parametrize(
    "state, match",
    [
        (_edit(lambda s: s.update(type="SGD")), r"state\['type'\]: expected 'Adam', got 'SGD'"),
        (_edit(lambda s: s.pop("steps")), r"state: expected keys .* missing \['steps'\]"),
        (_edit(lambda s: s.update(extra=1)), r"unexpected \['extra'\]"),
        (_edit(lambda s: s.update(steps=-1)), r"state\['steps'\]: expected an integer >= 0"),
        (_edit(lambda s: s.update(steps=1.5)), r"state\['steps'\]: expected an integer"),
        (_edit(lambda s: s["config"].update(lr=-1.0)), r"state\['config'\]: lr: expected a finite number > 0"),
        (_edit(lambda s: s["config"].update(momentum=0.9)), r"state\['config'\]: .*momentum"),
        (_edit(lambda s: s["buffers"].pop("exp_avg/Whh")), r"state\['buffers'\]: missing \['exp_avg/Whh'\]"),
        (_edit(lambda s: s["buffers"].update({"foo/Whh": np.zeros((4, 4))})), r"unexpected \['foo/Whh'\]"),
        (_edit(lambda s: s["buffers"].update({"exp_avg_sq/bh": np.zeros(5)})),
         r"state\['buffers'\]\['exp_avg_sq/bh'\]: expected shape \(4,\), got \(5,\)"),
        (_edit(lambda s: s["buffers"].update({"exp_avg/by": np.zeros(2, dtype=int)})),
         r"state\['buffers'\]\['exp_avg/by'\]: expected floats"),
    ],
    ids=["type", "missing-key", "extra-key", "negative-steps", "float-steps", "bad-config",
         "unknown-config", "missing-buffer", "extra-buffer", "shape", "int-buffer"],
)
def test_load_state_dict_rejects_and_changes_nothing(state, match):
    params = make_params(np.float64)
    opt = Adam(params, lr=0.5)
    opt.step(make_grads(np.float64, 1, seed=9)[0])
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["config"] == before["config"] and after["steps"] == before["steps"]
    for k in before["buffers"]:
        np.testing.assert_array_equal(after["buffers"][k], before["buffers"][k])


def test_load_state_dict_needs_a_dict():
    with pytest.raises(TypeError, match=r"state: expected a dict"):
        Adam(make_params(np.float64)).load_state_dict([("type", "Adam")])


def test_load_config_changes_buffers():
    """Loading an SGD state with momentum into an SGD without momentum brings the buffer."""
    params = make_params(np.float64)
    src = SGD(make_params(np.float64), lr=0.1, momentum=0.9)
    src.step(make_grads(np.float64, 1)[0])
    opt = SGD(params, lr=0.1)
    opt.load_state_dict(src.state_dict())
    assert opt.momentum == 0.9 and opt.steps == 1
    assert set(opt.state_dict()["buffers"]) == {f"momentum_buffer/{k}" for k in SHAPES}
