"""The ``cyrnn`` command (``python -m cyrnn``): demo, train, sample, info.

Most tests call ``cyrnn.cli.main`` in-process (fast, output via capsys); a few run the real
``python -m cyrnn`` in a subprocess to check the entry point, exit codes and streams.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cyrnn
from cyrnn import Vocabulary, kernels
from cyrnn import cli
from cyrnn.cli import main, zen_of_python

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cyrnn.__file__)))

TEXT = ("the quick brown fox jumps over the lazy dog; "
        "pack my box with five dozen liquor jugs.\n") * 12


def _env():
    """The environment of a subprocess that imports this process's cyrnn."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_cli(*args, timeout=120):
    """``python -m cyrnn ARGS`` with this checkout's cyrnn first on the path."""
    return subprocess.run([sys.executable, "-m", "cyrnn", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def run_cli_reader_leaves(*args, read=0, timeout=120):
    """``python -m cyrnn ARGS`` whose standard output is a pipe that the reader closes after
    reading ``read`` bytes (``cyrnn ... | head -c READ``); returns (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "cyrnn", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdout.read(read)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        return proc.wait(timeout=timeout), err
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    """A model written by ``cyrnn train`` (tiny and quick)."""
    path = tmp_path / "model.npz"
    code = main(["train", str(corpus), "--steps", "20", "--hidden", "16", "--batch-size", "4",
                 "--seq-len", "10", "--checkpoint", str(path)])
    assert code == 0
    capsys.readouterr()
    return path


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------


def test_info_subprocess():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert f"backend: {kernels.DEFAULT_BACKEND}" in result.stdout.splitlines()
    assert f"version: {cyrnn.__version__}" in result.stdout
    assert "blas:" in result.stdout and "available:" in result.stdout
    assert result.stderr == ""


def test_info_in_process(capsys):
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["backend"] == cyrnn.backend_info()["backend"]
    assert set(lines) == {"backend", "reason", "available", "blas", "simd", "threads", "version"}
    assert err == ""


@pytest.mark.parametrize("read", [0, 10], ids=["closed-at-once", "after-a-line"])
def test_info_into_a_closed_pipe_is_quiet(read):
    """``cyrnn info | head -1``: no broken-pipe message or traceback, exit status 1."""
    code, err = run_cli_reader_leaves("info", read=read)
    assert err == ""
    assert code in ((0, 1) if read else (1,))  # with read > 0 all of it may fit the pipe


def test_sample_into_a_pipe_closed_midway_is_quiet(trained):
    """More output than a pipe holds, and the reader leaves after 100 bytes."""
    code, err = run_cli_reader_leaves("sample", trained, "-n", 300_000, read=100)
    assert code == 1
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err
    assert err == ""


def _commands():
    parser = cli._parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices


@pytest.mark.parametrize("command", ["demo", "train", "sample", "info"])
def test_every_option_is_described_in_help(command, capsys):
    """``cyrnn COMMAND --help`` shows what the command does and a description of each option."""
    parser = _commands()[command]
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert parser.description and " ".join(parser.description.split()) in text
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        assert " ".join(action.help.split()) in text, action.option_strings


def test_no_arguments_prints_help_and_exits_2():
    result = run_cli()
    assert result.returncode == 2
    assert "usage: cyrnn" in result.stdout
    for command in ("demo", "train", "sample", "info"):
        assert command in result.stdout


def test_no_arguments_in_process(capsys):
    assert main([]) == 2
    assert "usage: cyrnn" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cyrnn {cyrnn.__version__}"


@pytest.mark.parametrize("argv", [["bogus"], ["train"], ["sample"], ["demo", "--steps", "x"],
                                  ["train", "f.txt", "--partition", "diagonal"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def test_zen_of_python():
    text = zen_of_python()
    assert text.startswith("The Zen of Python, by Tim Peters")
    assert "Beautiful is better than ugly." in text


def test_demo(capsys):
    assert main(["demo", "--steps", "60"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = [line.split() for line in out.splitlines()
            if re.fullmatch(r"\s*\d+\s+[\d.]+\s+[\d.]+\s+[\d,]+", line)]
    assert len(rows) == 10
    steps = [int(r[0]) for r in rows]
    losses = [float(r[1]) for r in rows]
    assert steps == list(range(6, 61, 6))
    assert losses[-1] < losses[0] - 0.3  # it learns
    for r in rows:  # bits per character = loss / ln 2
        assert float(r[2]) == pytest.approx(float(r[1]) / np.log(2), abs=2e-3)
    assert "training on the Zen of Python" in out
    for temperature in ("0.5", "1.0"):
        marker = f"sample at temperature {temperature}:\n"
        assert marker in out
        sample = out.split(marker, 1)[1]
        assert sample.startswith("Beautiful")
        # prime + 160 characters (which may include newlines), then the next section
        body = sample[: len("Beautiful") + 160]
        assert set(body) <= set(zen_of_python())


def test_demo_is_deterministic(capsys):
    argv = ["demo", "--steps", "20", "--hidden", "16", "--seed", "3"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    second = capsys.readouterr().out
    strip = lambda out: [line.split()[:3] for line in out.splitlines()  # noqa: E731
                         if "chars/s" not in line and "trained in" not in line]
    assert strip(first) == strip(second)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------


def test_train_writes_a_loadable_model(tmp_path, corpus, capsys):
    path = tmp_path / "out.npz"
    code = main(["train", str(corpus), "--steps", "20", "--hidden", "16", "--batch-size", "4",
                 "--seq-len", "10", "--checkpoint", str(path)])
    assert code == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"saving to {path}" in out
    assert "done: 20 steps" in out
    assert len([line for line in out.splitlines() if line.startswith("epoch")]) == 1
    model, opt_state, extra = cyrnn.load_checkpoint(path)
    vocab = Vocabulary.from_text(TEXT)
    assert model.vocab == vocab
    assert model.input_size == model.output_size == len(vocab)
    assert model.hidden_size == 16
    assert model.output == "softmax"
    assert model.dtype == np.float32
    # with a validation split, the best epoch's checkpoint: optimizer state included
    assert extra == {"epoch": 1}
    assert opt_state["type"] == "Adam" and opt_state["steps"] == 20
    assert opt_state["config"]["lr"] == 2e-3
    # it learned something: better than the uniform guess on the text
    ids = vocab.encode(TEXT)
    assert cyrnn.evaluate(model, ids) < np.log(len(vocab))


def test_train_progress_lines(tmp_path, corpus, capsys):
    """``--log-every 0``: a plain progress line per update on standard error (no terminal)."""
    code = main(["train", str(corpus), "--steps", "6", "--hidden", "8", "--batch-size", "2",
                 "--seq-len", "8", "--log-every", "0", "--checkpoint", str(tmp_path / "m.npz")])
    assert code == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 6
    for n, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"epoch +1  step {n}/6  loss \d+\.\d{{4}}  [\d,]+ tok/s", line), line
    assert "step 1/6" not in out and "done: 6 steps" in out


def test_train_bad_log_every(tmp_path, corpus, capsys):
    assert main(["train", str(corpus), "--steps", "2", "--log-every", "-1",
                 "--checkpoint", str(tmp_path / "m.npz")]) == 1
    assert "log_every" in capsys.readouterr().err


def test_train_options(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", str(corpus), "--steps", "5", "--hidden", "8", "--batch-size", "2",
                 "--seq-len", "8", "--val-fraction", "0", "--dtype", "float64",
                 "--nonlinearity", "relu", "--optimizer", "sgd", "--lr", "0.1",
                 "--partition", "random", "--backend", "numpy", "--clip-norm", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "done: 5 steps" in out
    assert "val_loss" not in out
    # default checkpoint: the text file's name with .npz, in the working directory
    model = cyrnn.load(tmp_path / "corpus.npz")
    assert model.dtype == np.float64
    assert model.nonlinearity == "relu"
    assert model.hidden_size == 8
    assert model.vocab == Vocabulary.from_text(TEXT)


def test_train_is_deterministic(tmp_path, corpus, capsys):
    params = []
    for name in ("a.npz", "b.npz"):
        assert main(["train", str(corpus), "--steps", "6", "--hidden", "8", "--batch-size", "2",
                     "--seq-len", "8", "--seed", "4", "--checkpoint",
                     str(tmp_path / name)]) == 0
        params.append(cyrnn.load(tmp_path / name).params)
    capsys.readouterr()
    for key in params[0]:
        np.testing.assert_array_equal(params[0][key], params[1][key])


def test_train_missing_file_subprocess(tmp_path):
    missing = tmp_path / "no-such-file.txt"
    result = run_cli("train", missing, "--steps", "2")
    assert result.returncode == 1
    assert "no-such-file.txt" in result.stderr
    assert result.stderr.startswith("cyrnn train:")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_train_too_short(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("abcabc", encoding="utf-8")
    assert main(["train", str(path), "--seq-len", "10"]) == 2
    out, err = capsys.readouterr()
    assert "too short" in err and "short.txt" in err
    assert not (tmp_path / "short.npz").exists()


def test_train_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("caf\xe9 " * 200).encode("latin-1"))
    assert main(["train", str(path), "--steps", "2", "--checkpoint",
                 str(tmp_path / "m.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cyrnn train:")


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------


def _sample_text(capsys, *argv):
    assert main(["sample", *map(str, argv)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.endswith("\n")
    return out[:-1]


def test_sample_length_and_determinism(trained, capsys):
    model = cyrnn.load(trained)
    first_char = model.vocab.chars[0]
    text = _sample_text(capsys, trained, "-n", 50, "--seed", 1)
    assert len(text) == 1 + 50
    assert text[0] == first_char  # the default prime
    assert set(text) <= set(TEXT)
    assert _sample_text(capsys, trained, "-n", 50, "--seed", 1) == text
    # it is model.sample with the same arguments
    assert text[1:] == model.sample(first_char, 50, seed=1)
    others = {_sample_text(capsys, trained, "-n", 50, "--seed", s) for s in (2, 3, 4)}
    assert others != {text}


def test_sample_with_prime_temperature_and_top_k(trained, capsys):
    model = cyrnn.load(trained)
    text = _sample_text(capsys, trained, "--prime", "the qu", "-n", 30, "--seed", 5,
                        "--temperature", "0.7", "--top-k", "3")
    assert text.startswith("the qu") and len(text) == 6 + 30
    assert text[6:] == model.sample("the qu", 30, temperature=0.7, top_k=3, seed=5)


def test_sample_greedy(trained, capsys):
    model = cyrnn.load(trained)
    text = _sample_text(capsys, trained, "--prime", "the", "-n", 40, "--greedy")
    assert text == "the" + model.greedy("the", 40)
    # greedy ignores the seed
    assert _sample_text(capsys, trained, "--prime", "the", "-n", 40, "--greedy",
                        "--seed", 9) == text


def test_sample_subprocess_deterministic(trained):
    runs = [run_cli("sample", trained, "-n", 50, "--seed", 1, "--backend", b)
            for b in ("cython", "cython", "numpy")]
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert len(result.stdout) == 1 + 50 + 1
    assert runs[0].stdout == runs[1].stdout
    model = cyrnn.load(trained)
    assert runs[0].stdout == model.vocab.chars[0] + model.sample(model.vocab.chars[0], 50,
                                                                 seed=1) + "\n"


def test_sample_missing_model(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "gone.npz")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("cyrnn sample:") and "gone.npz" in err


def test_sample_missing_model_subprocess(tmp_path):
    result = run_cli("sample", tmp_path / "gone.npz", "-n", 5)
    assert result.returncode == 1
    assert "gone.npz" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [b"not a model at all\n", b"PK\x03\x04garbage", b""])
def test_sample_non_model_file(tmp_path, capsys, content):
    path = tmp_path / "notes.npz"
    path.write_bytes(content)
    assert main(["sample", str(path), "-n", "5"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"cyrnn: error: {path}: ") and err.count("\n") == 1


def _bad_model(path, kind):
    """A character model file at ``path`` whose metadata is damaged as ``kind`` says."""
    model = cyrnn.RNN(4, 8, 4, output="softmax", seed=0)
    model.vocab = Vocabulary(list("abcd"))
    model.save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["metadata.json"].tobytes())
    if kind == "nested_json":
        text = "[" * 100_000 + "]" * 100_000
    else:
        if kind == "config_list":
            meta["config"] = []
        elif kind == "vocab_int":
            meta["vocab"] = 5
        elif kind == "optimizer_list":
            meta["optimizer"] = []
        elif kind == "hidden_huge":
            meta["config"]["hidden_size"] = 10**6
        else:
            raise AssertionError(kind)
        text = json.dumps(meta)
    arrays["metadata.json"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.mark.parametrize("kind", ["nested_json", "config_list", "vocab_int", "optimizer_list",
                                  "hidden_huge"])
def test_sample_bad_model_file_one_line(tmp_path, capsys, kind):
    """A damaged model file is reported in one line naming it, whatever the damage."""
    path = _bad_model(tmp_path / "bad.npz", kind)
    assert main(["sample", str(path), "-n", "5"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"cyrnn: error: {path}: ") and err.count("\n") == 1


def test_sample_bad_model_file_name_with_newline(tmp_path, capsys):
    path = _bad_model(tmp_path / "two\nlines.npz", "config_list")
    assert main(["sample", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cyrnn: error: ") and err.count("\n") == 1 and "lines.npz" in err


def test_sample_bad_model_file_subprocess(tmp_path):
    path = _bad_model(tmp_path / "bad.npz", "nested_json")
    result = run_cli("sample", path, "-n", 5)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"cyrnn: error: {path}: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_sample_npy_file(tmp_path, capsys):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.arange(4))
    assert main(["sample", str(path), "-n", "5"]) == 1
    assert "array.npz" in capsys.readouterr().err


def test_sample_model_without_vocabulary(tmp_path, capsys):
    path = tmp_path / "plain.npz"
    cyrnn.RNN(4, 8, 4, output="softmax", seed=0).save(path)
    assert main(["sample", str(path), "-n", "5"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "vocabulary" in err


@pytest.mark.parametrize("argv, match", [
    (["--prime", "QQQ"], "not in the vocabulary"),
    (["-n", "0"], "n"),
    (["--top-k", "1000"], "top_k"),
    (["--temperature", "-1"], "temperature"),
])
def test_sample_bad_options(trained, capsys, argv, match):
    assert main(["sample", str(trained), *argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("cyrnn sample:") and match in err


# ---------------------------------------------------------------------------------------------
# stacks
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def trained_stack(tmp_path, corpus, capsys):
    """A 2-layer character model with dropout written by ``cyrnn train``."""
    path = tmp_path / "stack.npz"
    code = main(["train", str(corpus), "--steps", "30", "--hidden", "16", "--batch-size", "4",
                 "--seq-len", "10", "--num-layers", "2", "--dropout", "0.1", "--checkpoint",
                 str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "num_layers=2" in out and "dropout=0.1" in out
    return path


def test_train_a_stack(trained_stack):
    model, opt_state, _ = cyrnn.load_checkpoint(trained_stack)
    assert (model.num_layers, model.bidirectional, model.dropout) == (2, False, 0.1)
    assert model.hidden_size == 16 and "Wxh_l1" in model.params
    assert {key.split("/")[1] for key in opt_state["buffers"]} == set(model.params)
    ids = model.vocab.encode(TEXT)
    assert cyrnn.evaluate(model, ids) < np.log(len(model.vocab))


def test_sample_a_stack(trained_stack, capsys):
    text = _sample_text(capsys, trained_stack, "--prime", "the ", "-n", "40", "--seed", "3")
    assert text.startswith("the ") and len(text) == 44
    assert _sample_text(capsys, trained_stack, "--prime", "the ", "-n", "40", "--seed", "3") == text
    model = cyrnn.load(trained_stack)
    assert text[4:] == model.sample("the ", 40, seed=3)
    greedy = _sample_text(capsys, trained_stack, "--prime", "the ", "-n", "20", "--greedy")
    assert greedy[4:] == model.greedy("the ", 20)


def test_train_bidirectional_is_refused(tmp_path, corpus, capsys):
    path = tmp_path / "bi.npz"
    assert main(["train", str(corpus), "--steps", "2", "--bidirectional", "--checkpoint",
                 str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("cyrnn train: --bidirectional: ") and "backwards" in err
    assert not path.exists()


def test_sample_of_a_bidirectional_model_is_one_line(tmp_path, capsys):
    """A bidirectional character model made in Python cannot generate: said in one line."""
    vocab = Vocabulary(list("abcd"))
    model = cyrnn.RNN(4, 5, 4, bidirectional=True, output="softmax", seed=0)
    model.vocab = vocab
    model.save(tmp_path / "bi.npz")
    assert main(["sample", str(tmp_path / "bi.npz"), "-n", "5"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("cyrnn sample: ") and "bidirectional" in err


def test_dropout_needs_layers(tmp_path, corpus, capsys):
    assert main(["train", str(corpus), "--steps", "2", "--dropout", "0.3", "--checkpoint",
                 str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err == "cyrnn train: --dropout acts between layers: it needs --num-layers 2 or more\n"


@pytest.mark.parametrize("argv", [["--num-layers", "0"], ["--num-layers", "two"],
                                  ["--num-layers", "1025"], ["--dropout", "1"],
                                  ["--dropout", "-0.5"], ["--dropout", "nan"],
                                  ["--dropout", "half"]])
def test_bad_layer_options_are_usage_errors(corpus, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["train", str(corpus), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage" in err and argv[0] in err


# ---------------------------------------------------------------------------------------------
# normalized and regularized recurrences
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, argv, expected", [
    ("lstm", ["--norm", "layer"], {"norm": "layer"}),
    ("gru", ["--norm", "batch"], {"norm": "batch"}),
    ("elman", ["--norm", "batch", "--val-fraction", "0"], {"norm": "batch"}),
    ("elman", ["--recurrent-dropout", "0.2"], {"recurrent_dropout": 0.2}),
    ("gru", ["--zoneout", "0.1"], {"zoneout": 0.1}),
    ("lstm", ["--weight-drop", "0.3", "--zoneout", "0.05"], {"weight_drop": 0.3, "zoneout": 0.05}),
], ids=["lstm-layer", "gru-batch", "elman-batch-no-val", "recurrent-dropout", "zoneout",
        "weight-drop-zoneout"])
def test_train_with_a_recurrence_option(tmp_path, corpus, capsys, cell, argv, expected):
    path = tmp_path / "m.npz"
    code = main(["train", str(corpus), "--steps", "8", "--hidden", "8", "--batch-size", "4",
                 "--seq-len", "10", "--cell", cell, "--checkpoint", str(path), *argv])
    assert code == 0, capsys.readouterr().err
    assert "done: 8 steps" in capsys.readouterr().out
    model = cyrnn.load(path)
    config = model.config()
    defaults = {"norm": None, "recurrent_dropout": 0.0, "zoneout": 0.0, "weight_drop": 0.0}
    assert {k: config[k] for k in defaults} == {**defaults, **expected}
    if "norm" in expected:
        assert {"gx", "gh"} <= set(model.params)
    if expected.get("norm") == "batch":
        # per step of a chunk (--seq-len 10), trained: not the initial mean 0, variance 1
        assert model.running and all(a.shape[0] == 10 for a in model.running.values())
        assert np.any(model.running["mean_x"] != 0) and np.all(model.running["var_x"] >= 0)
    else:
        assert model.running == {}
    text = _sample_text(capsys, path, "--prime", "the ", "-n", "12", "--seed", "1")
    assert text.startswith("the ") and len(text) == 16


def test_batch_norm_needs_two_streams(tmp_path, corpus, capsys):
    assert main(["train", str(corpus), "--steps", "2", "--norm", "batch", "--batch-size", "1",
                 "--checkpoint", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cyrnn train: --norm batch normalizes over the streams of a batch")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("argv", [["--norm", "group"], ["--zoneout", "1"],
                                  ["--recurrent-dropout", "-0.1"], ["--weight-drop", "nan"],
                                  ["--zoneout", "a lot"]])
def test_bad_recurrence_options_are_usage_errors(corpus, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["train", str(corpus), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage" in err and argv[0] in err
