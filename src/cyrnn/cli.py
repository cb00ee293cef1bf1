"""The ``cyrnn`` command: ``demo``, ``train``, ``sample`` and ``info``.

    cyrnn demo                          train on the Zen of Python; print the loss and samples
    cyrnn train TEXT_FILE [options]     a character-level language model (--cell elman, lstm or
                                        gru); saves a checkpoint
    cyrnn sample MODEL [options]        generate text from a saved model
    cyrnn info                          backend, BLAS, SIMD code in use and version

``python -m cyrnn`` is the same command.
"""
import argparse
import codecs
import functools
import importlib.util
import os
import sys
import time

import numpy as np

from . import __version__, backend_info, optim
from ._modelfile import MAX_LAYERS
from .data import Vocabulary, train_val_split
from .io import ModelFileError, load, load_checkpoint, save
from .rnn import GRU, LSTM, RNN
from .train import Checkpoint, fit


def zen_of_python():
    """The Zen of Python, read from the standard library's ``this`` module, where it is kept
    ROT13-encoded (without importing it, which would print it)."""
    source = importlib.util.find_spec("this").loader.get_source("this")
    encoded = source.split('s = """', 1)[1].split('"""', 1)[0]
    return codecs.decode(encoded, "rot13")


def _stops_quietly_on_closed_output(command):
    """Wrap a command so that it stops quietly, with exit status 1, when the reader of standard
    output goes away early (``cyrnn info | head -1``) instead of ending in a broken-pipe error."""

    @functools.wraps(command)
    def run(args):
        try:
            code = command(args)
            sys.stdout.flush()  # output still buffered is written (and may fail) here, not at exit
            return code
        except BrokenPipeError:
            # Python flushes standard output once more at exit: point it at the null device so
            # that this last flush cannot fail too
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, sys.stdout.fileno())
                finally:
                    os.close(devnull)
            except (OSError, ValueError):  # standard output is not a file (embedded use)
                pass
            return 1

    return run


@_stops_quietly_on_closed_output
def demo(args):
    text = zen_of_python()
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    model = RNN(len(vocab), args.hidden, len(vocab), output="softmax", seed=args.seed,
                backend=args.backend)
    model.vocab = vocab
    optimizer = optim.Adam(model.params, lr=args.lr)
    print(f"{model!r}\ntraining on the Zen of Python: {len(text)} characters, "
          f"vocabulary {len(vocab)}")
    print(f"{'steps':>6} {'loss':>7} {'bits/char':>9} {'chars/s':>9}")
    rounds, started, done = 10, time.perf_counter(), 0
    per_round = max(1, args.steps // rounds)
    for r in range(rounds):
        history = fit(model, ids, steps=per_round, epochs=per_round, batch_size=args.batch_size,
                      seq_len=args.seq_len, partition="random", optimizer=optimizer,
                      clip_norm=5.0, seed=args.seed + r)
        done += len(history.steps)
        loss = float(np.mean([s["loss"] for s in history.steps]))
        speed = np.mean(history["tokens_per_second"])
        print(f"{done:>6} {loss:>7.4f} {loss / np.log(2):>9.3f} {speed:>9,.0f}", flush=True)
    print(f"trained in {time.perf_counter() - started:.1f} s on the {model.backend} backend")
    for temperature in (0.5, 1.0):
        sample = model.sample("Beautiful", 160, temperature=temperature, seed=args.seed)
        print(f"\nsample at temperature {temperature}:\nBeautiful{sample}")
    return 0


_BIDIRECTIONAL_REFUSED = (
    "cyrnn train: --bidirectional: a character model predicts each next character and "
    "generates text one character at a time, which a model that also reads the text backwards "
    "cannot do (it would see the character it predicts); bidirectional models are for whole "
    "sequences, built in Python with cyrnn.RNN(..., bidirectional=True)")


#: The model class of each ``--cell``.
_CELLS = {"elman": RNN, "lstm": LSTM, "gru": GRU}


@_stops_quietly_on_closed_output
def train(args):
    if args.nonlinearity is not None and args.cell != "elman":
        print(f"cyrnn train: --nonlinearity is for --cell elman; the gates of --cell {args.cell} "
              f"have their own functions (sigmoid and tanh)", file=sys.stderr)
        return 2
    if args.bidirectional:
        print(_BIDIRECTIONAL_REFUSED, file=sys.stderr)
        return 2
    if args.dropout and args.num_layers == 1:
        print("cyrnn train: --dropout acts between layers: it needs --num-layers 2 or more",
              file=sys.stderr)
        return 2
    if args.norm == "batch" and args.batch_size < 2:
        print("cyrnn train: --norm batch normalizes over the streams of a batch: it needs "
              "--batch-size 2 or more", file=sys.stderr)
        return 2
    with open(args.text_file, encoding="utf-8") as fh:
        text = fh.read()
    if len(text) < 2 * args.seq_len:
        print(f"cyrnn train: {args.text_file} is too short ({len(text)} characters)", file=sys.stderr)
        return 2
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    train_ids, val_ids = (train_val_split(ids, args.val_fraction) if args.val_fraction > 0
                          else (ids, None))
    options = {} if args.cell != "elman" else {"nonlinearity": args.nonlinearity or "tanh"}
    model = _CELLS[args.cell](len(vocab), args.hidden, len(vocab), num_layers=args.num_layers,
                              dropout=args.dropout, output="softmax", dtype=args.dtype,
                              seed=args.seed, backend=args.backend, norm=args.norm,
                              recurrent_dropout=args.recurrent_dropout, zoneout=args.zoneout,
                              weight_drop=args.weight_drop, **options)
    model.vocab = vocab
    checkpoint = args.checkpoint or os.path.splitext(os.path.basename(args.text_file))[0] + ".npz"
    callbacks = [Checkpoint(checkpoint, best_only=val_ids is not None)]
    print(f"{model!r}: {len(text):,} characters, vocabulary {len(vocab)}; saving to {checkpoint}")
    history = fit(model, train_ids, val_ids, epochs=args.epochs, steps=args.steps,
                  batch_size=args.batch_size, seq_len=args.seq_len, partition=args.partition,
                  optimizer=args.optimizer, lr=args.lr, clip_norm=args.clip_norm or None,
                  callbacks=callbacks, seed=args.seed, verbose=True, log_every=args.log_every)
    if val_ids is None:
        save(model, checkpoint)
    print(f"done: {len(history.steps)} steps; model in {checkpoint}")
    return 0


@_stops_quietly_on_closed_output
def sample(args):
    model = load(args.model, backend=args.backend)
    if model.vocab is None:
        print(f"cyrnn sample: {args.model} has no vocabulary (not a character model)", file=sys.stderr)
        return 2
    prime = args.prime if args.prime else model.vocab.chars[0]
    if args.greedy:
        text = model.greedy(prime, args.n)
    else:
        text = model.sample(prime, args.n, temperature=args.temperature, top_k=args.top_k,
                            seed=args.seed)
    print(prime + text)
    return 0


@_stops_quietly_on_closed_output
def info(args):
    for key, value in backend_info().items():
        print(f"{key}: {value}")
    return 0


def _layers(text):
    """``--num-layers``: an int from 1 to the most a model file holds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_LAYERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_LAYERS}, got {value}")
    return value


def _probability(text):
    """``--dropout``, ``--recurrent-dropout``, ``--zoneout``, ``--weight-drop``: a number in
    [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def _parser():
    parser = argparse.ArgumentParser(prog="cyrnn", description="Recurrent networks (Elman, LSTM, GRU) trained by BPTT.")
    parser.add_argument("--version", action="version", version=f"cyrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do; 'cyrnn COMMAND --help' describes its options")

    def command(name, summary):
        """A subcommand whose summary is also the description of its --help."""
        return sub.add_parser(name, help=summary, description=summary)

    def common(p):
        p.add_argument("--backend", choices=("cython", "numpy"), default=None,
                       help="kernel backend (default: the compiled one)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = command("demo", "train on the Zen of Python and print the loss and samples")
    p.add_argument("--steps", type=int, default=1500, help="updates (default 1500)")
    p.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per update (default 16)")
    p.add_argument("--seq-len", type=int, default=25, help="characters per sequence (default 25)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    common(p)
    p.set_defaults(run=demo)

    p = command("train", "train a character-level language model on a text file")
    p.add_argument("text_file", help="UTF-8 text to learn")
    p.add_argument("--hidden", type=int, default=256,
                   help="hidden units of each layer (default 256)")
    p.add_argument("--num-layers", type=_layers, default=1, metavar="L",
                   help="stacked recurrent layers, each reading the states of the one below "
                        f"(1 to {MAX_LAYERS}; default 1)")
    p.add_argument("--bidirectional", action="store_true",
                   help="refused: a character model generates text forwards, one character at "
                        "a time, which a model reading the text backwards too cannot do")
    p.add_argument("--dropout", type=_probability, default=0.0, metavar="P",
                   help="dropout on the outputs of every layer but the last, in training only "
                        "(in [0, 1); needs --num-layers 2 or more; default 0)")
    p.add_argument("--cell", default="elman", choices=tuple(_CELLS),
                   help="recurrent cell: elman (h = f(x Wxh + h Whh + b), cyrnn.RNN), lstm "
                        "(long short-term memory, cyrnn.LSTM) or gru (gated recurrent unit, "
                        "cyrnn.GRU); default elman")
    p.add_argument("--nonlinearity", default=None,
                   choices=("tanh", "relu", "sigmoid", "leaky_relu", "identity"),
                   help="hidden unit function of an elman cell (default tanh); refused for "
                        "lstm and gru, whose gates have their own")
    p.add_argument("--norm", default=None, choices=("layer", "batch"),
                   help="normalize the input and recurrent terms of every step (and an lstm's "
                        "cell state): layer normalization, or batch normalization with running "
                        "statistics per step of a chunk (--seq-len), used when validating and "
                        "sampling; default none")
    p.add_argument("--recurrent-dropout", type=_probability, default=0.0, metavar="P",
                   help="variational dropout of the state in the recurrent product, one mask "
                        "per sequence, in training only (in [0, 1); default 0)")
    p.add_argument("--zoneout", type=_probability, default=0.0, metavar="P",
                   help="each unit of the state keeps its previous value with probability P "
                        "in training, in expectation when validating and sampling (in [0, 1); "
                        "default 0)")
    p.add_argument("--weight-drop", type=_probability, default=0.0, metavar="P",
                   help="DropConnect on the recurrent weights, one mask per update, in "
                        "training only (in [0, 1); default 0)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="floating-point precision of the weights (default float32)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the text (default 10)")
    p.add_argument("--steps", type=int, default=None,
                   help="stop after this many updates (default: when the epochs are done)")
    p.add_argument("--batch-size", type=int, default=32, help="streams per update (default 32)")
    p.add_argument("--seq-len", type=int, default=50, help="characters per update (default 50)")
    p.add_argument("--partition", default="sequential", choices=("sequential", "random"),
                   help="sequential: carry the hidden state from batch to batch; random: "
                        "shuffled independent sequences (default sequential)")
    p.add_argument("--optimizer", default="adam", choices=sorted(optim.OPTIMIZERS),
                   help="update rule (default adam)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3)")
    p.add_argument("--clip-norm", type=float, default=5.0,
                   help="clip the gradients' global norm to this (default 5.0; 0 for none)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="tail of the text held out for validation (default 0.05)")
    p.add_argument("--checkpoint", default=None,
                   help="where to save the model (default: TEXT_FILE's name with .npz)")
    p.add_argument("--log-every", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between progress lines on standard error when no progress "
                        "bar is shown (default 5; 0 for every update)")
    common(p)
    p.set_defaults(run=train)

    p = command("sample", "generate text from a saved character model")
    p.add_argument("model", help="a file written by 'cyrnn train' or model.save")
    p.add_argument("--prime", default="", help="text to start from")
    p.add_argument("-n", type=int, default=300, help="characters to generate (default 300)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature: lower is more conservative, 0 is greedy "
                        "(default 1.0)")
    p.add_argument("--top-k", type=int, default=None,
                   help="draw from the K most likely characters only (default: all)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely character")
    common(p)
    p.set_defaults(run=sample)

    p = command("info", "backend, BLAS, SIMD code in use and version")
    p.set_defaults(run=info)
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ModelFileError as exc:  # a bad model file: one line, no traceback
        message = " ".join(str(exc).splitlines())
        print(f"cyrnn: error: {message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"cyrnn {args.command}: {exc}", file=sys.stderr)
        return 1


# re-exported for the examples and tests that load checkpoints by hand
__all__ = ["main", "zen_of_python", "load_checkpoint"]
