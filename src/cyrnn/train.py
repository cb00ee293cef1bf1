"""The training loop: ``fit``, its ``History`` and callbacks.

``fit`` works on the plain pieces the rest of cyrnn provides (``loss_and_grad``, an optimizer
from ``cyrnn.optim``, clipping from ``cyrnn.clip``, batches from ``cyrnn.data``), so anything it
does can be done by hand in a few lines when a project needs a different loop.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import numpy as np

from . import _checks, data as data_mod
from .io import save as save_model
from ._typing import ArrayDict, Dataset, LossName, Reduction, Seed, StrPath, TargetSteps
from .clip import clip_grad_norm, clip_grad_value, grad_norm
from .optim import Optimizer, make_optimizer
from .rnn import RNN
from .truncation import Truncate

PARTITIONS = ("sequential", "random")
NONFINITE = ("raise", "skip")
LOG_EVERY = 5.0  # seconds between plain progress lines, by default


class History:
    """What ``fit`` measured.

    Attributes
    ----------
    steps : list of dict
        One record per update: ``step``, ``epoch``, ``loss``, ``grad_norm`` (before clipping),
        ``lr``, ``skipped`` (True when a non-finite loss or gradient was skipped).
    epochs : list of dict
        One record per epoch: ``epoch``, ``loss`` (mean training loss), ``grad_norm`` (mean),
        ``tokens_per_second``, ``seconds``, ``skipped``, and with validation data ``val_loss``;
        for cross-entropy also ``perplexity`` / ``val_perplexity`` (``exp`` of the mean loss).

    ``history["val_loss"]`` is the list of that key over the epochs.
    """

    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]

    def __init__(self) -> None:
        self.steps = []
        self.epochs = []

    def __getitem__(self, key: str) -> list[Any]:
        return [record.get(key) for record in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        return f"History({len(self.epochs)} epochs, {len(self.steps)} steps, last={last})"


class Callback:
    """Base class: ``on_epoch_end(state)`` runs after every epoch (and its validation);
    returning True stops training. ``state`` has ``model``, ``optimizer``, ``history`` and
    ``epoch``."""

    def on_epoch_end(self, state: _State) -> bool:
        return False

    def on_train_end(self, state: _State) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        An epoch key of the history, e.g. ``"val_loss"`` (default) or ``"loss"``.
    patience : int >= 1
    min_delta : float >= 0
    restore_best : bool
        At the end of training, copy the best epoch's parameters back into the model (and a
        ``norm="batch"`` model's running statistics of that epoch).
    """

    monitor: str
    patience: int
    min_delta: float
    restore_best: bool
    best: float
    best_epoch: Optional[int]
    _best_params: Optional[ArrayDict]
    _best_running: Optional[ArrayDict]

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        self.monitor = monitor
        self.patience = _checks.positive_int("patience", patience)
        self.min_delta = float(min_delta)
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta: expected a number >= 0, got {min_delta!r}")
        self.restore_best = restore_best
        self.best = math.inf
        self.best_epoch = None
        self._best_params = None
        self._best_running = None
        self._waited = 0

    def on_epoch_end(self, state: _State) -> bool:
        value = state.history.epochs[-1].get(self.monitor)
        if value is None:
            raise KeyError(f"EarlyStopping: no {self.monitor!r} in the history (validation data?)")
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self._waited = value, state.epoch, 0
            if self.restore_best:
                self._best_params = {k: p.copy() for k, p in state.model.params.items()}
                self._best_running = {k: a.copy() for k, a in
                                      getattr(state.model, "running", {}).items()}
            return False
        self._waited += 1
        return self._waited >= self.patience

    def on_train_end(self, state: _State) -> None:
        if self.restore_best and self._best_params is not None:
            state.model.set_params(self._best_params)
            if self._best_running:
                state.model.running = self._best_running


class Checkpoint(Callback):
    """Save the model (and optimizer state, to resume) after epochs.

    Parameters
    ----------
    path : str or os.PathLike
        File to write (overwritten each time).
    monitor : str or None
        With ``best_only``, the epoch key to minimize (default ``"val_loss"``).
    best_only : bool
        Save only when ``monitor`` improved.
    """

    path: StrPath
    monitor: Optional[str]
    best_only: bool
    best: float

    def __init__(self, path: StrPath, monitor: Optional[str] = "val_loss",
                 best_only: bool = False) -> None:
        self.path = path
        self.monitor = monitor
        self.best_only = best_only
        self.best = math.inf

    def on_epoch_end(self, state: _State) -> bool:
        if self.best_only:
            value = state.history.epochs[-1].get(self.monitor)
            if value is None:
                raise KeyError(f"Checkpoint: no {self.monitor!r} in the history (validation data?)")
            if not value < self.best:
                return False
            self.best = value
        # cyrnn.io.save: with a norm="batch" model's running statistics
        save_model(state.model, self.path, optimizer=state.optimizer,
                   extra={"epoch": state.epoch})
        return False


class _State:
    __slots__ = ("model", "optimizer", "history", "epoch")

    model: RNN
    optimizer: Optimizer
    history: History
    epoch: int

    def __init__(self, model, optimizer, history):
        self.model, self.optimizer, self.history, self.epoch = model, optimizer, history, 0


def fit(
    model: RNN,
    train: Dataset,
    val: Optional[Dataset] = None,
    *,
    epochs: int = 1,
    steps: Optional[int] = None,
    batch_size: int = 32,
    seq_len: int = 35,
    partition: Literal["sequential", "random"] = "sequential",
    optimizer: Union[str, Optimizer] = "adam",
    lr: Optional[float] = None,
    weight_decay: float = 0.0,
    clip_norm: Optional[float] = None,
    clip_value: Optional[float] = None,
    truncate: Truncate = None,
    loss: Optional[LossName] = None,
    reduction: Reduction = "mean",
    target_steps: TargetSteps = "all",
    callbacks: Sequence[Callback] = (),
    seed: Seed = None,
    on_nonfinite: Literal["raise", "skip"] = "raise",
    verbose: bool = False,
    log_every: Optional[float] = None,
) -> History:
    """Train ``model`` in place; return the ``History``.

    Parameters
    ----------
    model : cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
    train : ndarray of int (N,), or tuple ``(inputs, targets)`` / ``(inputs, targets, lengths)``
        A token stream for language modelling (the target is the next token), cut into batches
        by ``partition``; or a dataset of sequences in the model's layout (time-major
        ``(T, N, ...)``, or ``(N, T, ...)`` with ``batch_first``), shuffled into batches of
        ``batch_size`` sequences each epoch, with a fresh state for each.
    val : same forms as ``train``, optional
        Evaluated after every epoch (forward only).
    epochs : int
    steps : int, optional
        Stop after this many updates in total (possibly within an epoch).
    batch_size, seq_len : int
        Sequences per batch; steps per batch (token streams only).
    partition : {"sequential", "random"}
        Token streams: ``"sequential"`` carries the hidden state from batch to batch (an
        LSTM's pair ``(h, c)``; for a unidirectional model: a bidirectional one starts every
        chunk from zeros; the gradient is cut between batches: chunked truncated BPTT), ``"random"`` shuffles
        independent subsequences and resets the state (see ``cyrnn.data``).
    optimizer : str or cyrnn.optim.Optimizer
        A name for ``cyrnn.optim.make_optimizer`` (with ``lr`` and ``weight_decay``), or an
        optimizer built over ``model.params``.
    lr : float, optional
        Learning rate (the optimizer's default when None).
    weight_decay : float
        L2 penalty (decoupled for AdamW).
    clip_norm, clip_value : float, optional
        Clip the gradients' global norm / values before every update.
    truncate : None, int, TBPTT or RandomizedTruncation
        Truncation inside each batch, as in ``RNN.loss_and_grad``.
    loss, reduction, target_steps : as in ``RNN.loss_and_grad``.
    callbacks : sequence of Callback
        E.g. ``EarlyStopping``, ``Checkpoint``.
    seed : int, optional
        Seeds the partitioning and shuffling; with a seeded model, the run is reproducible.
    on_nonfinite : {"raise", "skip"}
        A non-finite loss or gradient norm raises ``FloatingPointError`` naming the step, or
        skips that update (counted in the history). NaN never reaches the weights.
    verbose : bool
        Report progress: one summary line per epoch on standard output and, within each
        epoch, progress on standard error: a tqdm bar when tqdm is installed
        (``pip install "cyrnn[progress]"``) and standard error is a terminal, else a plain line
        every ``log_every`` seconds (steps done / total, mean loss of the epoch so far,
        tokens per second). Off by default: library code stays quiet.
    log_every : float >= 0, optional
        Seconds between the plain progress lines when ``verbose`` (default 5; 0 writes one
        line per step). Ignored when ``verbose`` is False.

    Returns
    -------
    History

    Notes
    -----
    A model's normalization and regularizers (``norm``, ``recurrent_dropout``, ``zoneout``,
    ``weight_drop``) act as ``loss_and_grad`` applies them: masks drawn from
    ``model.generator`` at every update, batch statistics in training and the running ones in
    validation. With ``norm="batch"``, the running statistics are kept per step of a training
    call, so on a token stream they are per step *of a chunk*: with ``partition="sequential"``
    the state is carried on but every chunk restarts at step 0 of the statistics (step ``t``'s
    pool the ``t``-th steps of all chunks, ``S = seq_len``), and validation on a stream then
    reads it in chunks of ``seq_len`` too, the state carried (``evaluate(seq_len=...)``), so
    that each step meets the statistics it was trained with; with ``partition="random"`` (a
    fresh state per subsequence) validation reads each stream in one call, steps beyond
    ``seq_len`` taking the last step's statistics, as generation does. Each training batch
    needs at least 2 sequences (``batch_size >= 2``); of a dataset of sequences, a last batch
    of one sequence joins the batch before it.
    """
    epochs = _checks.positive_int("epochs", epochs)
    steps = None if steps is None else _checks.positive_int("steps", steps)
    batch_size = _checks.positive_int("batch_size", batch_size)
    seq_len = _checks.positive_int("seq_len", seq_len)
    if partition not in PARTITIONS:
        raise ValueError(f"partition: expected one of {', '.join(PARTITIONS)}, got {partition!r}")
    if on_nonfinite not in NONFINITE:
        raise ValueError(f"on_nonfinite: expected 'raise' or 'skip', got {on_nonfinite!r}")
    log_every = _seconds("log_every", LOG_EVERY if log_every is None else log_every)
    optimizer = _optimizer(model, optimizer, lr, weight_decay)
    rng = np.random.default_rng(seed)
    loss_name = model.resolve_loss(loss)
    stream = _is_stream(train)
    batches = _stream_batches(train, batch_size, seq_len, partition, rng) if stream else None
    history = History()
    state = _State(model, optimizer, history)
    progress = None
    done = 0
    try:
        for epoch in range(1, epochs + 1):
            state.epoch = epoch
            epoch_batches = (batches if stream else
                             _dataset_batches(train, batch_size, rng, model, target_steps))
            started = time.perf_counter()
            losses, norms, tokens, skipped = [], [], 0, 0
            h = None
            if verbose:
                if progress is None:
                    total = epochs * len(epoch_batches)
                    progress = _Progress(total if steps is None else min(steps, total), log_every)
                progress.start_epoch(epoch, len(epoch_batches))
            for batch in epoch_batches:
                x, target, lengths = batch if len(batch) == 3 else (*batch, None)
                # a sequential stream carries the state on, where the state after a chunk is
                # where the next one starts: not for a bidirectional model, whose reverse
                # direction ends at the chunk's first step
                h0 = h if (stream and partition == "sequential" and not model.bidirectional) \
                    else None
                value, grads, h = model.loss_and_grad(
                    x, target, h0=h0, lengths=lengths, loss=loss_name, reduction=reduction,
                    target_steps=target_steps, truncate=truncate, input_grad=False,
                )
                # the parameters' gradients only: not those of the initial state (an LSTM's
                # "c0" beside "h0"), which no update reads and no norm should count
                grads = {name: g for name, g in grads.items() if name in model.params}
                norm = clip_grad_norm(grads, clip_norm) if clip_norm else grad_norm(grads)
                done += 1
                record = {"step": done, "epoch": epoch, "loss": value, "grad_norm": norm,
                          "lr": optimizer.lr, "skipped": False}
                if not (math.isfinite(value) and math.isfinite(norm)):
                    if on_nonfinite == "raise":
                        raise FloatingPointError(
                            f"non-finite {'loss' if not math.isfinite(value) else 'gradient'} "
                            f"({value if not math.isfinite(value) else norm}) at step {done} "
                            f"(epoch {epoch}): lower the learning rate, clip the gradients "
                            f"(clip_norm=...) or pass on_nonfinite='skip'"
                        )
                    record["skipped"] = True
                    skipped += 1
                    h = None  # the carried state may be what went wrong
                else:
                    if clip_value:
                        clip_grad_value(grads, clip_value)
                    optimizer.step(grads)
                    losses.append(value)
                    norms.append(norm)
                history.steps.append(record)
                tokens += np.asarray(x).shape[0] * (np.asarray(x).shape[1] if np.ndim(x) > 1 else 1)
                if progress is not None:
                    progress.step(done, value, losses, tokens, started)
                if steps is not None and done >= steps:
                    break
            if progress is not None:
                progress.end_epoch()
            seconds = time.perf_counter() - started
            summary = {
                "epoch": epoch,
                "loss": float(np.mean(losses)) if losses else math.nan,
                "grad_norm": float(np.mean(norms)) if norms else math.nan,
                "tokens_per_second": tokens / seconds if seconds > 0 else math.nan,
                "seconds": seconds,
                "skipped": skipped,
            }
            if val is not None:
                # per-step statistics of chunks: validate chunk by chunk (see Notes)
                chunked = stream and partition == "sequential" and model.norm == "batch"
                summary["val_loss"] = evaluate(model, val, batch_size=batch_size, loss=loss_name,
                                               reduction=reduction, target_steps=target_steps,
                                               seq_len=seq_len if chunked else None)
            if loss_name == "cross_entropy":
                summary["perplexity"] = _perplexity(summary["loss"])
                if val is not None:
                    summary["val_perplexity"] = _perplexity(summary["val_loss"])
            history.epochs.append(summary)
            if verbose:
                print(_epoch_line(summary), flush=True)
            stop = [bool(cb.on_epoch_end(state)) for cb in callbacks]
            if any(stop) or (steps is not None and done >= steps):
                break
    finally:
        for cb in callbacks:
            cb.on_train_end(state)
    return history


def evaluate(model: RNN, data: Dataset, *, batch_size: int = 32, loss: Optional[LossName] = None,
             reduction: Reduction = "mean", target_steps: TargetSteps = "all",
             seq_len: Optional[int] = None) -> float:
    """Mean loss of ``model`` on ``data`` (a token stream or a dataset tuple, as in ``fit``),
    forward only (inference: a ``norm="batch"`` model's running statistics, no masks).

    A token stream is read as ``min(batch_size, N - 1)`` contiguous streams in one call, the
    state carried through; the loss is the mean over all predicted tokens. With ``seq_len``,
    the streams are read in chunks of ``seq_len`` steps instead, the state carried from chunk
    to chunk (not for a bidirectional model), as ``fit``'s sequential partition trains: each
    chunk starts at step 0 of a ``norm="batch"`` model's per-step statistics. ``seq_len`` does
    not apply to a dataset of sequences.
    """
    if _is_stream(data):
        ids = _stream_ids(data)
        B = max(1, min(batch_size, len(ids) - 1))
        L = (len(ids) - 1) // B
        if L < 1:
            raise ValueError(f"data: a token stream needs at least 2 tokens, got {len(ids)}")
        cut = ids[: B * L + 1]
        x = cut[:-1].reshape(B, L).T
        y = cut[1:].reshape(B, L).T
        if seq_len is None:
            if model.batch_first:
                x, y = x.T, y.T
            return model.evaluate(x, y, loss=loss, reduction=reduction)[0]
        seq_len = _checks.positive_int("seq_len", seq_len)
        total, h = 0.0, None
        for start in range(0, L, seq_len):
            xs, ys = x[start:start + seq_len], y[start:start + seq_len]
            if model.batch_first:
                xs, ys = xs.T, ys.T
            value, h = model.evaluate(xs, ys, h0=h, loss=loss, reduction="sum")
            if model.bidirectional:
                h = None
            total += value
        if reduction == "sum":
            return total
        name = model.resolve_loss(loss)
        width = 1 if name == "cross_entropy" else (model.output_size or
                                                   model.architecture.top_size)
        return total / (B * L * width)
    # sums per batch, divided at the end by the count the mean runs over (positions for
    # cross-entropy, elements for mse/bce): batching must not reweight anything
    loss = model.resolve_loss(loss)
    width = 1 if loss == "cross_entropy" else (model.output_size or model.architecture.top_size)
    total, count = 0.0, 0
    for batch in _dataset_batches(data, batch_size, None, model, target_steps):
        x, target, lengths = batch if len(batch) == 3 else (*batch, None)
        value, _ = model.evaluate(x, target, lengths=lengths, loss=loss, reduction="sum",
                                  target_steps=target_steps)
        total += value
        n = _num_sequences(x, model)
        if target_steps == "last":
            count += n * width
        elif lengths is not None:
            count += int(np.sum(lengths)) * width
        else:
            count += np.asarray(x).shape[1 if model.batch_first else 0] * n * width
    return total if reduction == "sum" else total / count


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _optimizer(model, optimizer, lr, weight_decay):
    if isinstance(optimizer, Optimizer):
        if lr is not None or weight_decay:
            raise ValueError("lr, weight_decay: set them on the optimizer you pass, not on fit")
        return optimizer
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer: expected a name or a cyrnn.optim.Optimizer, got {optimizer!r}")
    kwargs = {"weight_decay": weight_decay}
    if lr is not None:
        kwargs["lr"] = lr
    return make_optimizer(optimizer, model.params, **kwargs)


def _is_stream(data):
    return isinstance(data, (np.ndarray, list)) and np.ndim(data) == 1


def _stream_ids(data):
    ids = np.asarray(data)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"data: a token stream must hold integer ids, got dtype {ids.dtype}")
    return ids


def _stream_batches(data, batch_size, seq_len, partition, rng):
    ids = _stream_ids(data)
    if partition == "sequential":
        return data_mod.sequential_batches(ids, batch_size, seq_len, rng=rng)
    return data_mod.random_batches(ids, batch_size, seq_len, rng=rng)


def _num_sequences(x, model):
    x = np.asarray(x)
    return x.shape[0] if model.batch_first else x.shape[1]


def _dataset_batches(data, batch_size, rng, model, target_steps="all"):
    """Batches of a ``(inputs, targets[, lengths])`` dataset along its sequence axis, shuffled
    when ``rng`` is given (training: then a ``norm="batch"`` model's last batch has at least 2
    sequences when there are 2). Targets of every step share the inputs' layout; those of the last
    step only (``target_steps="last"``) have the sequences first."""
    if not isinstance(data, tuple) or len(data) not in (2, 3):
        raise TypeError("data: expected a 1-D token stream or a tuple (inputs, targets[, lengths])")
    inputs, targets = np.asarray(data[0]), np.asarray(data[1])
    lengths = None if len(data) == 2 else np.asarray(data[2])
    axis = 0 if model.batch_first else 1
    if inputs.ndim < 2:
        raise ValueError(f"inputs: expected a batch of sequences, got shape {inputs.shape}")
    N = inputs.shape[axis]
    target_axis = 0 if (target_steps == "last" or model.batch_first) else 1
    if targets.ndim <= target_axis or targets.shape[target_axis] != N:
        raise ValueError(f"targets: expected {N} sequences like inputs, got shape {targets.shape}")
    order = rng.permutation(N) if rng is not None else np.arange(N)
    batches = []
    for start, stop in batch_bounds(N, batch_size, rng is not None and model.norm == "batch"):
        idx = order[start:stop]
        batch = (np.take(inputs, idx, axis=axis), np.take(targets, idx, axis=target_axis))
        if lengths is not None:
            batch += (lengths[idx],)
        batches.append(batch)
    return batches


def batch_bounds(n: int, batch_size: int, batch_statistics: bool = False) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch of ``n`` sequences taken ``batch_size`` at a time; with
    ``batch_statistics`` (training a ``norm="batch"`` model, whose statistics need 2 sequences)
    a last batch of one sequence joins the batch before it."""
    starts = list(range(0, n, batch_size))
    if batch_statistics and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def _perplexity(mean_loss):
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


def _epoch_line(summary):
    parts = [f"epoch {summary['epoch']:>3}", f"loss {summary['loss']:.4f}"]
    if "perplexity" in summary:
        parts.append(f"ppl {summary['perplexity']:.2f}")
    if "val_loss" in summary:
        parts.append(f"val_loss {summary['val_loss']:.4f}")
    if "val_perplexity" in summary:
        parts.append(f"val_ppl {summary['val_perplexity']:.2f}")
    parts.append(f"|g| {summary['grad_norm']:.3g}")
    parts.append(f"{summary['tokens_per_second']:,.0f} tok/s")
    if summary["skipped"]:
        parts.append(f"skipped {summary['skipped']}")
    return "  ".join(parts)


def _seconds(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number of seconds, got {value!r}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")
    return float(value)


class _Progress:
    """Progress within the epochs of one ``fit``, on standard error: a tqdm bar per epoch when
    tqdm is installed and standard error is a terminal, else a plain line every ``every``
    seconds (and none for an epoch shorter than that: its summary line says it all)."""

    def __init__(self, total, every):
        self.total, self.every = total, every
        self.bar_factory = _progress_bar()
        self.bar = None
        self.epoch = 0
        self.last = 0.0

    def start_epoch(self, epoch, batches):
        self.epoch = epoch
        self.last = time.perf_counter()
        if self.bar_factory is not None:
            self.bar = self.bar_factory(total=batches, desc=f"epoch {epoch}")

    def step(self, done, value, losses, tokens, started):
        """After update ``done``: ``value`` its loss, ``losses`` the epoch's finite losses so
        far, ``tokens`` the epoch's tokens so far, since ``started`` (``time.perf_counter``)."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{value:.4f}")
            return
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        seconds = now - started
        loss = f"{np.mean(losses):.4f}" if losses else "nan"
        speed = f"{tokens / seconds:,.0f}" if seconds > 0 else "-"
        print(f"epoch {self.epoch:>3}  step {done}/{self.total}  loss {loss}  {speed} tok/s",
              file=sys.stderr, flush=True)

    def end_epoch(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _progress_bar():
    """tqdm's constructor when tqdm is installed and standard error is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda total, desc: tqdm(total=total, desc=desc, leave=False)
