"""The type information cyrnn ships: ``py.typed``, annotations on every public signature that
resolve, ``Literal`` options that match the values the code accepts, and stubs of the compiled
kernels that match their NumPy twins.

``cyrnn.io`` and ``cyrnn.cli`` are not annotated yet (they were being reworked when the rest
was); they are left out of the checks below until they are.
"""
import ast
import importlib
import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import cyrnn
from cyrnn import _checks, _typing, kernels, losses, rnn, train

PACKAGE = Path(cyrnn.__file__).parent

# every module whose public signatures are annotated
ANNOTATED_MODULES = (
    "cyrnn",
    "cyrnn._threads",
    "cyrnn.clip",
    "cyrnn.data",
    "cyrnn.diagnostics",
    "cyrnn.init",
    "cyrnn.losses",
    "cyrnn.optim",
    "cyrnn.rnn",
    "cyrnn.train",
    "cyrnn.truncation",
    "cyrnn.kernels",
    "cyrnn.kernels.numpy_backend",
    "cyrnn.kernels.numpy_fused",
    "cyrnn.kernels.numpy_sample",
)


def _public_functions(obj):
    """(qualified name, function) of the public callables of a class, inherited ones from cyrnn's
    own (private) bases included, with ``__init__``, ``__call__`` and property getters."""
    found = []
    for name in dir(obj):
        if name.startswith("_") and name not in ("__init__", "__call__"):
            continue
        owner = next(klass for klass in obj.__mro__ if name in vars(klass))
        if not owner.__module__.startswith("cyrnn"):
            continue
        member = vars(owner)[name]
        if isinstance(member, (classmethod, staticmethod)):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member):
            found.append((f"{obj.__qualname__}.{name}", member))
    return found


def public_callables():
    """(name, function) of every public function and method of the annotated modules."""
    found = {}
    for module_name in ANNOTATED_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isfunction(obj):
                found[f"{module_name}.{name}"] = obj
            elif inspect.isclass(obj):
                for qualname, function in _public_functions(obj):
                    found.setdefault(f"{module_name}.{qualname}", function)
    return sorted(found.items())


PUBLIC = public_callables()


def test_py_typed_ships_next_to_the_package():
    assert (PACKAGE / "py.typed").is_file()
    assert (PACKAGE / "_rnn.pyi").is_file() and (PACKAGE / "_sample.pyi").is_file()


def test_package_data_lists_the_type_files():
    pyproject = PACKAGE.parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source tree")
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    assert set(config["tool"]["setuptools"]["package-data"]["cyrnn"]) >= {"py.typed", "*.pyi"}


def test_the_public_api_is_found():
    names = {name for name, _ in PUBLIC}
    for expected in ("cyrnn.rnn.RNN.__init__", "cyrnn.rnn.RNN.from_torch", "cyrnn.rnn.RNN.sample",
                     "cyrnn.optim.Adam.__init__", "cyrnn.optim.StepLR.__call__",
                     "cyrnn.data.SequentialBatches.batch_size", "cyrnn.train.fit",
                     "cyrnn.kernels.get_backend", "cyrnn.backend_info",
                     "cyrnn.kernels.numpy_sample.sample_tokens", "cyrnn._threads.set_num_threads"):
        assert expected in names
    assert len(names) > 80


@pytest.mark.parametrize("name, function", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_signatures_are_annotated_and_resolve(name, function):
    # evaluates every annotation: a name that is not defined or imported raises here
    hints = typing.get_type_hints(function)
    parameters = list(inspect.signature(function).parameters.values())
    if parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    missing = [p.name for p in parameters if p.name not in hints]
    assert not missing, f"{name}: parameters without annotations {missing}"
    assert "return" in hints, f"{name}: no return annotation"


@pytest.mark.parametrize("alias, values", [
    (_typing.Nonlinearity, _checks.NONLINEARITIES),
    (_typing.OutputName, losses.OUTPUTS),
    (_typing.LossName, losses.LOSSES),
    (_typing.Reduction, losses.REDUCTIONS),
    (_typing.TargetSteps, rnn.TARGET_STEPS),
    (_typing.InitScheme, cyrnn.init.INITS),
    (_typing.BackendName, kernels.BACKENDS),
    (_typing.StepLossName, kernels.numpy_fused.STEP_LOSSES),
])
def test_literal_options_match_the_checked_values(alias, values):
    assert typing.get_args(alias) == tuple(values)


def test_fit_options_match_the_checked_values():
    hints = typing.get_type_hints(train.fit)
    assert typing.get_args(hints["partition"]) == train.PARTITIONS
    assert typing.get_args(hints["on_nonfinite"]) == train.NONFINITE


def _stub_functions(stub):
    tree = ast.parse((PACKAGE / stub).read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def _stub_parameters(node):
    """(name, kind, default, annotation) of a stub function's parameters, as in ``inspect``."""
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + [
        ast.literal_eval(d) for d in args.defaults]
    rows = [(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d, ast.unparse(a.annotation))
            for a, d in zip(positional, defaults)]
    rows += [(a.arg, inspect.Parameter.KEYWORD_ONLY,
              inspect.Parameter.empty if d is None else ast.literal_eval(d),
              ast.unparse(a.annotation)) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return rows


STUBS = [(stub, name) for stub in ("_rnn.pyi", "_sample.pyi", "_gated.pyi", "_recurrence.pyi") for name in _stub_functions(stub)]


@pytest.mark.parametrize("stub, name", STUBS)
def test_stubs_match_the_numpy_twins_and_the_compiled_kernels(stub, name):
    node = _stub_functions(stub)[name]
    expected = _stub_parameters(node)
    if name in kernels.KERNEL_NAMES:
        twin = getattr(kernels.numpy_kernels, name)
        # the twin's annotations are the strings of its source (postponed evaluation)
        got = [(p.name, p.kind, p.default, twin.__annotations__[p.name])
               for p in inspect.signature(twin).parameters.values()]
        assert got == expected
        assert ast.unparse(node.returns) == twin.__annotations__["return"]
    if kernels.cython_backend is not None:
        compiled = getattr(importlib.import_module("cyrnn." + stub[:-4]), name)
        got = [(p.name, p.kind, p.default)
               for p in inspect.signature(compiled).parameters.values()]
        assert got == [row[:3] for row in expected]


def test_every_compiled_kernel_has_a_stub():
    stubbed = set().union(*(_stub_functions(s) for s in ("_rnn.pyi", "_sample.pyi", "_gated.pyi", "_recurrence.pyi")))
    assert set(kernels.KERNEL_NAMES) <= stubbed


USAGE = '''
import numpy as np
import numpy.typing as npt
import cyrnn
from cyrnn.optim import Adam, CosineLR

model = cyrnn.RNN(4, 8, 4, output="softmax", nonlinearity="relu", dtype=np.float64, seed=0)
x = np.zeros((5, 2), dtype=np.intp)
y, h = model.forward(x)
loss, grads, h_last = model.loss_and_grad(x, x, truncate=cyrnn.TBPTT(2), reduction="sum")
total: float = loss + cyrnn.clip_grad_norm(grads, 1.0)
Adam(model.params, lr=1e-3, schedule=CosineLR(100)).step(grads)
ids: npt.NDArray[np.integer] = model.sample([1, 2], 3, top_k=2)
text: str = model.greedy("ab", 3)
history = cyrnn.fit(model, np.arange(50) % 4, epochs=1, batch_size=2, seq_len=5, clip_norm=1.0)
last: float = history.epochs[-1]["loss"]
cyrnn.set_num_threads(None)
backends: tuple[str, ...] = cyrnn.kernels.available_backends()
'''

MISTAKES = '''
import numpy as np
import cyrnn

model = cyrnn.RNN(4, 8, nonlinearity="tahn")
model.forward(np.zeros((5, 2, 4)), lenghts=None)
text: str = model.sample([1, 2], 3)
'''


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    pytest.importorskip("mypy")
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(tmp_path, cache, source):
    """mypy's report on ``source``, with cyrnn found where this test imported it from, as an
    installed package: its own modules are read for their signatures only (not reported on), and
    without ``py.typed`` they would not be read at all."""
    script = tmp_path / "usage.py"
    script.write_text(source, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(PACKAGE.parent), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary",
         "--cache-dir", str(cache), str(script)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path), cwd=tmp_path,
        timeout=600)
    return result.stdout + result.stderr


def test_mypy_accepts_typical_use(tmp_path, mypy_cache):
    assert _mypy(tmp_path, mypy_cache, USAGE) == ""


def test_mypy_catches_mistakes(tmp_path, mypy_cache):
    report = _mypy(tmp_path, mypy_cache, MISTAKES)
    assert "usage.py:5:" in report and "tahn" in report  # not a nonlinearity
    assert "usage.py:6:" in report and "lenghts" in report  # not an argument
    assert "usage.py:7:" in report  # token ids in, token ids out
