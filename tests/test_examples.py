"""The examples run (in their fast mode) and the sine-wave regression actually learns."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cyrnn

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(name, *args):
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(cyrnn.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), "--fast", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_min_char_rnn_example_runs_and_learns():
    result = _run("min_char_rnn.py")
    assert result.returncode == 0, result.stderr
    losses = [float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines()
              if line.startswith("iter")]
    assert len(losses) == 10 and losses[-1] < losses[0]


def test_min_char_rnn_example_with_a_stack():
    """Runs; a stack of the example's tiny normal init starts slower, so 200 iterations only
    bring the smoothed loss down from its peak."""
    result = _run("min_char_rnn.py", "--num-layers", "2", "--dropout", "0.1")
    assert result.returncode == 0, result.stderr
    losses = [float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines()
              if line.startswith("iter")]
    assert len(losses) == 10 and losses[-1] < max(losses)
    assert result.stdout.count("----") == 2


def test_sine_wave_example_runs():
    result = _run("sine_wave.py")
    assert result.returncode == 0, result.stderr
    assert "val mse" in result.stdout and "forecast" in result.stdout


def test_gradient_flow_example_shows_vanishing_and_exploding(tmp_path):
    result = _run("gradient_flow.py")
    assert result.returncode == 0, result.stderr
    rows = {line[:28].strip(): [float(v) for v in line[28:].split()]
            for line in result.stdout.splitlines() if line.startswith(("tanh", "relu", "linear"))}
    assert rows["tanh, uniform init"][-1] < 1e-3            # vanishes
    assert rows["linear, orthogonal"][-1] == pytest.approx(1.0)  # preserved
    assert rows["linear, 1.1 x orthogonal"][-1] > 5          # explodes
    assert "after clip_grad_norm(1.0): 1 " in result.stdout


def test_gradient_flow_plot_is_optional(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "flow.png"
    result = _run("gradient_flow.py", "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 1000


def _final_table(stdout, first_column):
    """The rows of the table after the header starting with ``first_column``: name -> numbers."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_column))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        name, values = line[:10].strip(), line[10:].split()
        rows[name] = [float(v) for v in values[:4] if v[0].isdigit() or v[0] in "-n"]
    return rows


def _curves(stdout):
    """The per-epoch table (after its ``epoch`` header): model -> values over the epochs."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("epoch"))
    names = [lines[start][5 + 10 * k:15 + 10 * k].strip()
             for k in range((len(lines[start]) - 5) // 10)]
    columns = {name: [] for name in names}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        for name, value in zip(names, line.split()[1:]):
            columns[name].append(float(value))
    return columns


MODELS = ["tanh RNN", "IRNN", "LSTM", "GRU"]


def test_adding_example_compares_the_four_models():
    """The table has the four models with finite MSEs; the baseline is printed; every model's
    curve starts untrained (far above 1/6) and the trained LSTM and GRU come down to the
    baseline's neighbourhood (the fast mode is too short to go far below it)."""
    result = _run("adding.py")
    assert result.returncode == 0, result.stderr
    assert "MSE = 1/6 = 0.1667" in result.stdout
    table = _final_table(result.stdout, "model")
    assert list(table) == MODELS
    for name, (params, mse, ratio, seconds) in table.items():
        assert params > 0 and np.isfinite(mse) and mse == pytest.approx(ratio / 6, abs=1e-3)
    curves = _curves(result.stdout)
    assert list(curves) == MODELS and all(len(c) == 5 for c in curves.values())
    for name in ("LSTM", "GRU"):
        assert curves[name][-1] < curves[name][0] / 4 and curves[name][-1] < 0.2


def test_copy_example_compares_the_four_models():
    """The table has the four models with finite losses and recall fractions; the baseline
    10 log 8 / (T + 20) is printed (T = 5 in the fast mode); the LSTM's loss went down from its
    untrained value to within 15% of the baseline."""
    import math

    result = _run("copy_task.py")
    assert result.returncode == 0, result.stderr
    assert f"= {10 * math.log(8) / 25:.4f} nats per step" in result.stdout
    table = _final_table(result.stdout, "model")
    assert list(table) == MODELS
    for name, (params, loss, ratio, recall) in table.items():
        assert params > 0 and np.isfinite(loss) and 0 <= recall <= 1
        assert ratio == pytest.approx(loss / (10 * math.log(8) / 25), abs=1e-3)
    curves = _curves(result.stdout)
    assert list(curves) == MODELS
    lstm = curves["LSTM"]
    assert lstm[-1] < lstm[0] / 2 and lstm[-1] < 1.15 * 10 * math.log(8) / 25


@pytest.mark.parametrize("name", ["adding.py", "copy_task.py"])
def test_gated_examples_plot_is_optional(name, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    result = _run(name, "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("backend_name", ["cython", "numpy"])
def test_rnn_learns_the_sine_wave(backend_name):
    """Next-value prediction of a noisy sine (noise std 0.02, so MSE floor 4e-4): the validation
    MSE must fall below 3e-3 (the variance of the series is 0.5)."""
    t = np.arange(1500) * 0.1
    series = (np.sin(t) + 0.02 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    train, val = cyrnn.data.train_val_split(series, 0.2)
    model = cyrnn.RNN(1, 24, 1, seed=0, backend=backend_name)
    history = cyrnn.fit(model, cyrnn.data.sliding_windows(train, 40, stride=4),
                        cyrnn.data.sliding_windows(val, 40, stride=4), epochs=12, batch_size=16,
                        optimizer="adam", lr=1e-2, clip_norm=1.0, seed=0)
    assert history["val_loss"][-1] < 3e-3
    assert history["val_loss"][-1] < history["val_loss"][0] / 5


README = os.path.join(os.path.dirname(EXAMPLES), "README.md")


def _readme_snippets():
    """The ```python blocks of the README, in order."""
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_snippets():
    assert len(_readme_snippets()) >= 5


@pytest.mark.parametrize("index", range(len(_readme_snippets())))
def test_readme_snippet_runs(index, tmp_path):
    """Every Python block of the README runs as it stands, on its own, in a directory that has
    the ``input.txt`` the character-model block reads."""
    from cyrnn.cli import zen_of_python

    snippet = _readme_snippets()[index]
    # a block of an optional extra (scikit-learn, Dask, torch) runs where the extra is installed
    for module in re.findall(r"^(?:from|import) (sklearn|dask|distributed|torch|keras)\b",
                             snippet, flags=re.M):
        pytest.importorskip(module)
    (tmp_path / "input.txt").write_text(zen_of_python() * 4, encoding="utf-8")
    script = tmp_path / "snippet.py"
    script.write_text(snippet, encoding="utf-8")
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(cyrnn.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr


NORMALIZED = ["tanh", "tanh LN", "tanh BN", "LSTM", "LSTM LN", "LSTM BN"]


def _titled_tables(stdout, prefix):
    """The tables whose title line starts with ``prefix``: title -> {row name: numbers}, the
    row name in the first 10 characters, the header line after the title skipped."""
    lines = stdout.splitlines()
    tables = {}
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            rows = {}
            for row in lines[i + 2:]:
                if not row.strip():
                    break
                rows[row[:10].strip()] = [float(v) for v in row[10:].split()]
            tables[line] = rows
    return tables


def test_normalized_example_measures_the_six_models():
    """Every table has the six models with finite numbers. At initialisation (which training
    cannot change, so the same on every backend) every normalized model passes at least 1000x
    more of the last step's error back to step 0 than its plain twin, on both tasks (measured
    over seeds 0-3 in the fast mode: 10 to 40 orders of magnitude more; after training no
    such order holds, so none is asserted). Training lowers every validation curve."""
    result = _run("normalized.py")
    assert result.returncode == 0, result.stderr
    assert "MSE = 1/6 = 0.1667" in result.stdout
    flows = _titled_tables(result.stdout, "gradient flow, ")
    assert len(flows) == 4
    for title, rows in flows.items():
        assert list(rows) == NORMALIZED, title
        for name, values in rows.items():
            assert len(values) == 6 and np.all(np.isfinite(values)) and min(values) >= 0, name
            assert values[-1] == pytest.approx(values[0] / values[-2], rel=0.01, abs=1e-300)
    for task in ("text", "adding problem"):
        rows = next(r for t, r in flows.items() if t.startswith(f"gradient flow, {task}, at "
                                                                   "initialisation"))
        for kind in ("tanh", "LSTM"):
            for norm in (" LN", " BN"):
                assert rows[kind + norm][-1] > 1e3 * rows[kind][-1], (task, kind + norm)
    curves = _curves(result.stdout)  # the first per-epoch table: text bits per char
    assert list(curves) == NORMALIZED and all(len(c) == 3 for c in curves.values())
    for name, curve in curves.items():
        assert np.all(np.isfinite(curve)) and curve[-1] < curve[0], name
    adding = _curves(result.stdout.split("adding problem: test MSE per epoch", 1)[1])
    assert list(adding) == NORMALIZED
    for name, curve in adding.items():  # from untrained (about 1) to the mean's neighbourhood
        assert len(curve) == 3 and curve[-1] < curve[0] and curve[-1] < 0.25, name
    table = _titled_tables(result.stdout, "summary: ")
    (summary,) = table.values()
    assert list(summary) == NORMALIZED
    for name, (params, bits, train_bits, _, mse, ratio, _) in summary.items():
        assert params > 0 and np.isfinite(bits) and np.isfinite(train_bits)
        assert mse == pytest.approx(ratio / 6, abs=1e-3)


def test_normalized_example_plot_is_optional(tmp_path):
    """``--plot`` saves a PNG where matplotlib is installed and says so where it is not."""
    out = tmp_path / "normalized.png"
    result = _run("normalized.py", "--plot", str(out))
    assert result.returncode == 0, result.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed: no plot" in result.stdout and not out.exists()
    else:
        assert out.stat().st_size > 1000
