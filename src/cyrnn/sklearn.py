"""scikit-learn estimators over ``cyrnn.RNN``, ``cyrnn.LSTM`` and ``cyrnn.GRU``:
``RNNClassifier``, ``RNNRegressor``.

They follow the estimator contract (``get_params``/``set_params``, ``clone``, ``fit`` returning
``self``, fitted attributes ending in ``_``), so ``GridSearchCV``, ``Pipeline``,
``cross_val_score`` and joblib work with them; scikit-learn is an optional extra
(``pip install "cyrnn[sklearn]"``).

Inputs ``X``
    ``(n_samples, T, n_features)``: ``n_samples`` sequences of ``T`` steps;
    ``(n_samples, T)``: univariate sequences (one feature per step; scikit-learn sees a table of
    ``T`` columns, so ``n_features_in_ == T`` and predictions need the same ``T``);
    a list of sequences of different lengths, each ``(T_i, n_features)`` or ``(T_i,)``: padded
    and passed to the model with ``lengths`` (each sequence is read up to its own last step).
    Values are real numbers (cast to ``dtype``).

Each estimator builds a ``cyrnn.RNN(batch_first=True)`` (``cyrnn.LSTM`` for ``cell="lstm"``,
``cyrnn.GRU`` for ``cell="gru"``; ``model_`` after ``fit``) and trains it
by minibatches in its own short loop over ``RNN.loss_and_grad`` (so that ``sample_weight``
weights each sequence's loss exactly), with the optimizers and clipping of cyrnn.

``nonlinearity`` applies to the Elman cell only and is ignored for ``cell="lstm"`` and
``"gru"`` (their gates have their own sigmoid and tanh), as scikit-learn's own estimators ignore
the hyperparameters of a solver they do not use: a grid over ``cell`` and ``nonlinearity``
together then runs (the gated cells' results repeat across the nonlinearities).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (_check_sample_weight, check_array, check_is_fitted,
                                          column_or_1d, validate_data)
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError('cyrnn.sklearn needs scikit-learn >= 1.6: pip install "cyrnn[sklearn]"'
                      ) from exc

from . import optim
from .clip import clip_grad_norm, grad_norm
from .rnn import GRU, LSTM, RNN
from .train import batch_bounds

__all__ = ["RNNClassifier", "RNNRegressor", "EXPECTED_FAILED_CHECKS", "CELLS",
           "expected_failed_checks"]

#: The recurrent cells the estimators can build.
CELLS = ("elman", "lstm", "gru")
#: The model class of each cell.
_MODELS = {"elman": RNN, "lstm": LSTM, "gru": GRU}

#: Checks of ``sklearn.utils.estimator_checks`` that cannot hold for these estimators, with the
#: reason: pass ``EXPECTED_FAILED_CHECKS[name]`` as ``check_estimator(...,
#: expected_failed_checks=...)``.
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {"RNNClassifier": {}, "RNNRegressor": {}}
# None today. check_sample_weight_equivalence_on_dense_data (an integer weight equals repeating the
# sequence) passes on its 15 sequences because both runs train to the same saturated fit; in
# general minibatch training with a weighted loss and with repeated sequences take different (equally
# valid) paths. A weight of 1 equals no weight, and a weight of 0 equals leaving the sequence out,
# exactly.

#: What ``expected_failed_checks`` adds for the gated cells.
_GATED_EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": (
        "an integer weight and the repeated sequence give the same loss, but minibatch training "
        "takes different paths with them; the LSTM classifier's two fits on the check's data "
        "end 2e-6 apart (relative), beyond the check's tolerance, where the Elman fits saturate "
        "to the same one"),
}


#: What ``expected_failed_checks`` adds for ``norm="batch"``.
_BATCH_NORM_EXPECTED_FAILURES = {
    name: "with norm='batch' unequal sample weights are refused: the weighted loss is computed "
          "per group of equal weights, and batch statistics over a group are not those of the "
          "batch"
    for name in ("check_sample_weights_not_overwritten",
                 "check_sample_weight_equivalence_on_dense_data")}


def expected_failed_checks(estimator: Any) -> dict[str, str]:
    """The checks of ``sklearn.utils.estimator_checks`` that cannot hold for ``estimator``,
    with the reason: ``check_estimator(est, expected_failed_checks=expected_failed_checks(est))``
    (``EXPECTED_FAILED_CHECKS[name]`` for its Elman cell, more for LSTM and GRU and for
    ``norm="batch"``)."""
    failed = dict(EXPECTED_FAILED_CHECKS[type(estimator).__name__])
    if getattr(estimator, "cell", "elman") != "elman":
        failed.update(_GATED_EXPECTED_FAILURES)
    if getattr(estimator, "norm", None) == "batch":
        failed.update(_BATCH_NORM_EXPECTED_FAILURES)
    return failed


class _RNNEstimator(BaseEstimator):
    """Shared constructor, input handling and training loop of the estimators."""

    # the RNN's output function and the loss positions; set by the subclasses
    _target_steps = "last"

    def __init__(
        self,
        cell: str = "elman",
        hidden_size: int = 32,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        init: str = "xavier",
        dtype: str = "float64",
        optimizer: str = "adam",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        max_iter: int = 100,
        batch_size: int = 32,
        clip_norm: Optional[float] = 5.0,
        truncate: Any = None,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-4,
        warm_start: bool = False,
        random_state: Any = None,
        verbose: bool = False,
        backend: Optional[str] = None,
        threads: Optional[int] = None,
        norm: Optional[str] = None,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.nonlinearity = nonlinearity
        self.init = init
        self.dtype = dtype
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.clip_norm = clip_norm
        self.truncate = truncate
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.backend = backend
        self.threads = threads
        self.norm = norm
        self.recurrent_dropout = recurrent_dropout
        self.zoneout = zoneout
        self.weight_drop = weight_drop

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    # -----------------------------------------------------------------------------------------
    # public API shared by both estimators
    # -----------------------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Train on sequences ``X`` with targets ``y`` for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array (n_samples, T, n_features), (n_samples, T), or list of sequences
        y : array
            See the estimator's description.
        sample_weight : array (n_samples,), optional
            Weight of each sequence's loss (a weight of 0 leaves it out).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, partial=False)

    def _more_partial_fit(self, X, y, sample_weight, classes=None):
        return self._fit(X, y, sample_weight, partial=True, classes=classes)

    # -----------------------------------------------------------------------------------------
    # inputs
    # -----------------------------------------------------------------------------------------

    def _sequences(self, X, y=None, reset=False):
        """``(x (n, T, F), lengths (n,) or None, y checked)`` from any accepted form of ``X``;
        with ``reset``, records ``n_features_in_`` and the layout."""
        dtype = [np.float64, np.float32]
        ragged = isinstance(X, (list, tuple)) and len(X) > 0 and not _rectangular(X)
        if not ragged and np.asarray(X).ndim == 2:
            # a table: scikit-learn's own checks (feature names, n_features_in_) apply
            if not reset and getattr(self, "_layout", None) == "sequences":
                if self.model_.input_size != 1:
                    raise ValueError(
                        f"X: a 2-D array is (n_samples, T) univariate sequences, but "
                        f"{type(self).__name__} was fitted on {self.model_.input_size} features "
                        f"per step; pass (n_samples, T, {self.model_.input_size})")
                x = check_array(X, dtype=dtype)
                return x[:, :, None], None, y
            if y is None:
                x = validate_data(self, X, reset=reset, dtype=dtype)
            else:
                x, y = validate_data(self, X, y, reset=reset, dtype=dtype,
                                     **self._y_validation())
            if reset:
                self._layout = "table"
            return x[:, :, None], None, y
        if ragged:
            x, lengths = _pad(X, self.dtype)
        else:
            x = check_array(X, allow_nd=True, dtype=dtype, ensure_2d=False)
            if x.ndim != 3:
                raise ValueError(
                    f"X: expected (n_samples, T, n_features), (n_samples, T) or a list of "
                    f"sequences, got an array of shape {x.shape}. Reshape your data: a single "
                    f"sequence with X[None], a single univariate sequence with X.reshape(1, -1).")
            if x.shape[1] == 0:
                raise ValueError(f"X: sequences need at least one step, got shape {x.shape}")
            lengths = None
        features = x.shape[2]
        if reset:
            self.n_features_in_ = features
            self._layout = "sequences"
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif self._layout == "sequences" and features != self.n_features_in_:
            raise ValueError(f"X has {features} features per step, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features per step as input.")
        elif self._layout == "table" and features != self.model_.input_size:
            raise ValueError(f"X has {features} features per step, but {type(self).__name__} "
                             f"was fitted on univariate sequences (1 feature per step).")
        if y is not None:
            y = self._check_y(y, x.shape[0])
        return x, lengths, y

    # -----------------------------------------------------------------------------------------
    # training
    # -----------------------------------------------------------------------------------------

    def _fit(self, X, y, sample_weight, partial, classes=None):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             f"is None")
        self._check_hyperparameters()
        first = not hasattr(self, "model_") or not (partial or self.warm_start)
        x, lengths, y = self._sequences(X, y, reset=first)
        n = x.shape[0]
        sample_weight = _check_sample_weight(sample_weight, x[:, :, 0], dtype=np.float64)
        if np.any(sample_weight < 0):
            raise ValueError("sample_weight: expected weights >= 0")
        targets = self._encode_targets(y, first, classes)
        keep = sample_weight > 0
        if not keep.any():
            raise ValueError("sample_weight: every weight is 0, nothing to train on")
        if self.norm == "batch" and keep.sum() < 2:
            raise ValueError(f"norm='batch' trains on batch statistics: it needs at least 2 "
                             f"sequences, got {int(keep.sum())} sample")
        if self.norm == "batch" and np.unique(sample_weight[keep]).size > 1:
            raise ValueError(
                "sample_weight: with norm='batch' the weights must be equal (or 0): unequal "
                "weights split each batch by weight, and batch statistics over the parts are "
                "not those of the batch")
        if not keep.all():  # a weight of 0 is the same as leaving the sequence out
            x, targets, sample_weight = x[keep], targets[keep], sample_weight[keep]
            lengths = None if lengths is None else lengths[keep]
        sample_weight = sample_weight / sample_weight.mean()  # mean 1: the scale of lr is kept
        if first:
            rng = check_random_state(self.random_state)
            model_seed, shuffle_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
            self.model_ = self._build_model(x.shape[2], model_seed)
            self._optimizer = optim.make_optimizer(self.optimizer, self.model_.params,
                                                   **self._optimizer_kwargs())
            self._shuffle = np.random.default_rng(shuffle_seed)
            self.n_iter_ = 0
            self.loss_curve_ = []
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_loss_ = math.inf
        train = (x, targets, lengths, sample_weight)
        val = None
        if self.early_stopping and not partial:
            train, val = self._split(train, y)
        if not partial and not first:  # warm start: a fresh stopping criterion
            self.best_loss_ = math.inf
        self._train(train, val, epochs=1 if partial else self.max_iter)
        return self

    def _train(self, train, val, epochs):
        x, targets, lengths, weights = train
        batch_size = min(self.batch_size, x.shape[0])
        best_params, best_running, waited = None, None, 0
        for _ in range(epochs):
            order = self._shuffle.permutation(x.shape[0])
            total, count = 0.0, 0.0
            for start, stop in batch_bounds(x.shape[0], batch_size, self.norm == "batch"):
                idx = order[start:stop]
                value, grads = self._loss(x[idx], targets[idx],
                                          None if lengths is None else lengths[idx], weights[idx],
                                          need_grads=True)
                norm = clip_grad_norm(grads, self.clip_norm) if self.clip_norm else grad_norm(grads)
                if not (math.isfinite(value) and math.isfinite(norm)):
                    raise FloatingPointError(
                        f"non-finite loss or gradient at epoch {self.n_iter_ + 1}: lower lr or "
                        f"set clip_norm")
                self._optimizer.step(grads)
                total += value * weights[idx].sum()
                count += weights[idx].sum()
            self.n_iter_ += 1
            loss = total / count
            self.loss_curve_.append(loss)
            monitored = loss
            if val is not None:
                monitored = self._mean_loss(val)
                self.validation_scores_.append(monitored)
            if self.verbose:
                extra = f", validation loss {monitored:.6f}" if val is not None else ""
                print(f"Iteration {self.n_iter_}, loss = {loss:.6f}{extra}")
            # scikit-learn's MLP rule: no improvement by tol for n_iter_no_change epochs
            if monitored > self.best_loss_ - self.tol:
                waited += 1
            else:
                waited = 0
            if monitored < self.best_loss_:
                self.best_loss_ = monitored
                if val is not None:
                    best_params = {k: p.copy() for k, p in self.model_.params.items()}
                    # norm="batch": the statistics that go with those weights
                    best_running = {k: a.copy() for k, a in self.model_.running.items()}
            if waited >= self.n_iter_no_change:
                if self.verbose:
                    print(f"No improvement by at least tol={self.tol} for "
                          f"{self.n_iter_no_change} epochs: stopping.")
                break
        if best_params is not None:
            self.model_.set_params(best_params)
            self.model_.running = best_running

    def _loss(self, x, targets, lengths, weights, need_grads):
        """Weighted mean loss of a batch (and its gradient): one call when the weights are
        equal, else one call per distinct weight with sums, combined exactly."""
        model = self.model_
        kwargs = {"lengths": lengths, "target_steps": self._target_steps}
        values = np.unique(weights)
        if values.size == 1:
            scale = float(values[0])
            if not need_grads:
                return model.evaluate(x, targets, **kwargs)[0] * scale, None
            value, grads, _ = model.loss_and_grad(x, targets, truncate=self.truncate,
                                                  input_grad=False, **kwargs)
            # the parameters' gradients only (not h0, nor an LSTM's c0: no norm counts them)
            grads = {k: g for k, g in grads.items() if k in model.params}
            if scale != 1.0:
                for g in grads.values():
                    g *= scale
            return value * scale, grads
        total, grads = 0.0, None
        for v in values:
            sel = weights == v
            part_lengths = None if lengths is None else lengths[sel]
            part = dict(kwargs, lengths=part_lengths)
            if not need_grads:
                total += v * model.evaluate(x[sel], targets[sel], reduction="sum", **part)[0]
                continue
            value, g, _ = model.loss_and_grad(x[sel], targets[sel], reduction="sum",
                                              truncate=self.truncate, input_grad=False, **part)
            total += v * value
            if grads is None:
                grads = {k: v * a for k, a in g.items() if k in model.params}
            else:
                for k in grads:
                    grads[k] += v * g[k]
        count = self._loss_count(targets, lengths)
        if grads is not None:
            for g in grads.values():
                g /= count
        return total / count, grads

    def _loss_count(self, targets, lengths):
        """What ``reduction="mean"`` divides the summed loss by for these targets."""
        positions = targets.shape[0]
        if self._target_steps == "all":
            positions = int(lengths.sum()) if lengths is not None else targets.shape[0] * targets.shape[1]
        if self.model_.resolve_loss() == "cross_entropy":
            return positions
        return positions * self.model_.output_size

    def _mean_loss(self, data):
        x, targets, lengths, weights = data
        total, count = 0.0, 0.0
        for start in range(0, x.shape[0], 256):
            sl = slice(start, start + 256)
            value, _ = self._loss(x[sl], targets[sl], None if lengths is None else lengths[sl],
                                  weights[sl], need_grads=False)
            total += value * weights[sl].sum()
            count += weights[sl].sum()
        return total / count

    def _split(self, train, y):
        x, targets, lengths, weights = train
        n = x.shape[0]
        n_val = int(math.ceil(self.validation_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"early_stopping: validation_fraction={self.validation_fraction} of {n} "
                f"sequences leaves no validation or no training sequence")
        stratify = targets if self._stratify() else None
        index = np.arange(n)
        try:
            train_idx, val_idx = train_test_split(index, test_size=n_val, stratify=stratify,
                                                  random_state=self._shuffle.integers(2**31 - 1))
        except ValueError:  # too few of some class to stratify
            train_idx, val_idx = train_test_split(index, test_size=n_val,
                                                  random_state=self._shuffle.integers(2**31 - 1))

        def take(idx):
            return (x[idx], targets[idx], None if lengths is None else lengths[idx], weights[idx])

        return take(train_idx), take(val_idx)

    def _build_model(self, features, seed):
        # nonlinearity: the Elman cell's only (ignored for the gated cells, see the module)
        options = {"nonlinearity": self.nonlinearity} if self.cell == "elman" else {}
        return _MODELS[self.cell](
            features, self.hidden_size, self._output_size(), num_layers=self.num_layers,
            bidirectional=self.bidirectional, dropout=self.dropout, output=self._output(),
            init=self.init, dtype=self.dtype, seed=seed, backend=self.backend, batch_first=True,
            threads=self.threads, norm=self.norm, recurrent_dropout=self.recurrent_dropout,
            zoneout=self.zoneout, weight_drop=self.weight_drop, **options)

    def _optimizer_kwargs(self):
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def _check_hyperparameters(self):
        if not isinstance(self.cell, str) or self.cell not in CELLS:
            raise ValueError(f"cell: expected one of {', '.join(map(repr, CELLS))}, got "
                             f"{self.cell!r}")
        for name in ("max_iter", "batch_size", "n_iter_no_change"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got "
                             f"{self.validation_fraction!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol: expected a number >= 0, got {self.tol!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm: expected a number > 0 or None, got {self.clip_norm!r}")

    # -----------------------------------------------------------------------------------------
    # outputs
    # -----------------------------------------------------------------------------------------

    def _outputs(self, X):
        """The model's outputs ``g(z)``: ``(n, O)`` at each sequence's last valid step, or
        ``(n, T, O)`` at every step (target_steps="all"), with the lengths."""
        check_is_fitted(self, "model_")
        x, lengths, _ = self._sequences(X)
        y, _ = self.model_.forward(x, lengths=lengths)
        if self._target_steps == "all":
            return y, lengths
        last = (lengths - 1) if lengths is not None else np.full(x.shape[0], x.shape[1] - 1)
        return y[np.arange(x.shape[0]), last], lengths


class RNNClassifier(ClassifierMixin, _RNNEstimator):
    """Sequence classification with a recurrent network (Elman, LSTM or GRU): the class of each
    sequence from the state after its last valid step.

    Two classes: one sigmoid output and binary cross-entropy; more: a softmax output and
    cross-entropy.

    Parameters
    ----------
    cell : {"elman", "lstm", "gru"}
        The recurrent cell: ``model_`` is a ``cyrnn.RNN``, ``cyrnn.LSTM`` or ``cyrnn.GRU``.
    hidden_size, num_layers, bidirectional, dropout, init, dtype, backend, threads
        As in ``cyrnn.RNN`` (``init="identity"`` is for the Elman cell only).
    norm, recurrent_dropout, zoneout, weight_drop
        The normalization and regularizers of the recurrence, as in ``cyrnn.RNN``. With
        ``norm="batch"``, every training batch holds at least 2 sequences (a last batch of one
        joins the one before), predictions use the running statistics, and the sample weights
        of a fit must be equal (the batch statistics are those of the whole batch).
    nonlinearity : str
        As in ``cyrnn.RNN``, for ``cell="elman"``; ignored for the gated cells (see the
        module docstring).
    optimizer : str
        A name of ``cyrnn.optim.make_optimizer`` ("adam", "sgd", "rmsprop", ...).
    lr, weight_decay : float
        Learning rate and L2 penalty of the optimizer.
    max_iter : int
        Epochs (passes over the training data) at most.
    batch_size : int
        Sequences per update.
    clip_norm : float or None
        Clip the gradients' global norm before every update.
    truncate : None, int, cyrnn.TBPTT or cyrnn.RandomizedTruncation
        Truncation of BPTT, as in ``RNN.loss_and_grad``.
    early_stopping : bool
        Hold out ``validation_fraction`` of the training sequences (stratified) and stop when
        their loss has not improved by ``tol`` for ``n_iter_no_change`` epochs; the best epoch's
        weights are kept. Without it, the training loss is monitored the same way.
    validation_fraction, n_iter_no_change, tol
    warm_start : bool
        ``fit`` continues from the current model instead of a new one.
    random_state : int, RandomState or None
        Seeds the initialisation, dropout, shuffling and validation split.
    verbose : bool
        Print the loss after every epoch.

    Attributes
    ----------
    classes_ : ndarray
    model_ : cyrnn.RNN, cyrnn.LSTM or cyrnn.GRU
    n_features_in_ : int
        Features per step (3-D or ragged input), or the columns of a 2-D table.
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    validation_scores_ : list of float or None
        Validation loss of each epoch (with ``early_stopping``).
    best_loss_ : float
    """

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``X, y``; ``classes`` (every class) is needed on the first call."""
        return self._more_partial_fit(X, y, sample_weight, classes=classes)

    def predict_proba(self, X):
        """Class probabilities ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        p, _ = self._outputs(X)
        if len(self.classes_) == 2:
            p1 = p[:, 0].astype(np.float64)
            return np.column_stack([1.0 - p1, p1])
        return p.astype(np.float64)

    def predict(self, X):
        """The most probable class of each sequence."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def _y_validation(self):
        return {}

    def _check_y(self, y, n):
        y = column_or_1d(y, warn=True)
        if y.shape[0] != n:
            raise ValueError(f"y: expected {n} labels (one per sequence in X), got {y.shape[0]}")
        return y

    def _stratify(self):
        return True

    def _encode_targets(self, y, first, classes):
        check_classification_targets(y)
        if first:
            found = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if len(found) < 2:
                raise ValueError(f"y: a classifier needs at least 2 classes, got 1 class "
                                 f"({found[0]!r})")
            self.classes_ = found
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes: expected {self.classes_!r} as in the first call, got "
                             f"{np.unique(classes)!r}")
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"y: labels {unknown!r} are not in classes_ {self.classes_!r}")
        ids = np.searchsorted(self.classes_, y)
        if len(self.classes_) == 2:
            return ids.astype(self.dtype)[:, None]
        return ids.astype(np.intp)

    def _more_partial_fit(self, X, y, sample_weight, classes=None):
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes: partial_fit needs every class on its first call "
                             "(classes=...)")
        return super()._more_partial_fit(X, y, sample_weight, classes)

    def _output_size(self):
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _output(self):
        return "sigmoid" if len(self.classes_) == 2 else "softmax"


class RNNRegressor(RegressorMixin, _RNNEstimator):
    """Sequence regression with a recurrent network (Elman, LSTM or GRU): a value (or vector) per sequence from the state
    after its last valid step, or a value per step (sequence to sequence).

    Parameters
    ----------
    target_steps : {"last", "all"}
        ``"last"``: ``y`` is ``(n_samples,)`` or ``(n_samples, n_outputs)``, one target per
        sequence. ``"all"``: ``y`` has a target per step, ``(n_samples, T)`` or
        ``(n_samples, T, n_outputs)`` (or a list of ``(T_i,)`` / ``(T_i, n_outputs)`` arrays for
        ragged ``X``), and so do the predictions. Next-step forecasting is ``"all"`` with ``y``
        the inputs shifted by one step.
    Other parameters
        As in ``RNNClassifier``; the output is linear and the loss the mean squared error.

    Attributes
    ----------
    model_, n_features_in_, n_iter_, loss_curve_, validation_scores_, best_loss_
        As in ``RNNClassifier``.
    """

    def __init__(self, cell="elman", hidden_size=32, num_layers=1, bidirectional=False,
                 dropout=0.0, nonlinearity="tanh", init="xavier", dtype="float64",
                 optimizer="adam", lr=0.01, weight_decay=0.0, max_iter=100, batch_size=32,
                 clip_norm=5.0, truncate=None, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, warm_start=False, random_state=None,
                 verbose=False, backend=None, threads=None, norm=None, recurrent_dropout=0.0,
                 zoneout=0.0, weight_drop=0.0, target_steps="last"):
        super().__init__(
            cell=cell, hidden_size=hidden_size, num_layers=num_layers,
            bidirectional=bidirectional, dropout=dropout, nonlinearity=nonlinearity, init=init,
            dtype=dtype, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
            max_iter=max_iter, batch_size=batch_size, clip_norm=clip_norm, truncate=truncate,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change, tol=tol, warm_start=warm_start,
            random_state=random_state, verbose=verbose, backend=backend, threads=threads,
            norm=norm, recurrent_dropout=recurrent_dropout, zoneout=zoneout,
            weight_drop=weight_drop)
        self.target_steps = target_steps

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    @property
    def _target_steps(self):
        return self.target_steps

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``X, y``, continuing from the current model."""
        return self._more_partial_fit(X, y, sample_weight)

    def predict(self, X):
        """Predictions: ``(n_samples,)`` / ``(n_samples, n_outputs)``, or per step
        ``(n_samples, T[, n_outputs])`` (a list of ``(T_i[, n_outputs])`` for ragged ``X``)
        with ``target_steps="all"``."""
        y, lengths = self._outputs(X)
        y = y.astype(np.float64)
        if self._scalar_target:
            y = y[..., 0]
        if lengths is not None and self.target_steps == "all":
            return [y[i, :length] for i, length in enumerate(lengths)]
        return y

    def score(self, X, y, sample_weight=None):
        """R² of the predictions (over every valid step with ``target_steps="all"``)."""
        if self.target_steps == "last":
            return super().score(X, y, sample_weight=sample_weight)
        predicted = self.predict(X)
        x, lengths, target = self._sequences(X, y)
        pred = _pad_targets(predicted, x.shape[1]) if isinstance(predicted, list) else predicted
        pred = pred.reshape(target.shape)
        mask = _step_mask(x.shape[0], x.shape[1], lengths)
        weights = None
        if sample_weight is not None:
            weights = np.broadcast_to(np.asarray(sample_weight, float)[:, None], mask.shape)[mask]
        return r2_score(target[mask], pred[mask], sample_weight=weights)

    def _y_validation(self):
        return {"multi_output": True, "y_numeric": True}

    def _check_y(self, y, n):
        if self.target_steps not in ("last", "all"):
            raise ValueError(f"target_steps: expected 'last' or 'all', got {self.target_steps!r}")
        if isinstance(y, (list, tuple)) and len(y) and not _rectangular(y):
            y = _pad_targets(y, None)
        y = np.asarray(y, dtype=np.float64)
        if y.shape[:1] != (n,):
            raise ValueError(f"y: expected {n} targets (one per sequence in X), got shape {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("y: contains NaN or infinity")
        return y

    def _stratify(self):
        return False

    def _encode_targets(self, y, first, classes):
        y = np.asarray(y, dtype=np.float64)
        if self.target_steps == "all":
            if y.ndim not in (2, 3):
                raise ValueError(f"y: with target_steps='all', expected (n_samples, T) or "
                                 f"(n_samples, T, n_outputs), got shape {y.shape}")
            scalar = y.ndim == 2
        else:
            if y.ndim not in (1, 2):
                raise ValueError(f"y: expected (n_samples,) or (n_samples, n_outputs), got shape "
                                 f"{y.shape}; for a target per step pass target_steps='all'")
            scalar = y.ndim == 1
        if scalar:
            y = y[..., None]
        if first:
            self._scalar_target = scalar
            self.n_outputs_ = y.shape[-1]
        elif y.shape[-1] != self.n_outputs_ or scalar != self._scalar_target:
            raise ValueError(f"y: expected {self.n_outputs_} outputs as in the first fit, got "
                             f"shape {y.shape}")
        return np.ascontiguousarray(y, dtype=self.dtype)

    def _sequences(self, X, y=None, reset=False):
        x, lengths, y = super()._sequences(X, y, reset)
        if y is not None and self.target_steps == "all":
            y = np.asarray(y)
            if y.ndim >= 2 and y.shape[1] != x.shape[1]:
                raise ValueError(f"y: expected {x.shape[1]} steps like X, got shape {y.shape}")
        return x, lengths, y

    def _output_size(self):
        return self.n_outputs_

    def _output(self):
        return "linear"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _rectangular(items):
    """Whether a list of sequences has one shape throughout (then it is an ordinary array)."""
    shapes = {np.shape(item) for item in items}
    return len(shapes) == 1


def _pad(sequences, dtype):
    """Ragged sequences ``(T_i, F)`` or ``(T_i,)`` -> ``(n, max T, F)`` zero-padded, lengths."""
    arrays = []
    features = None
    for i, seq in enumerate(sequences):
        a = check_array(seq, ensure_2d=False, dtype=[np.float64, np.float32],
                        ensure_min_samples=0, input_name=f"X[{i}]")
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(f"X[{i}]: expected a sequence (T, n_features) or (T,), got shape "
                             f"{a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"X[{i}]: empty sequence; every sequence needs at least one step")
        if features is None:
            features = a.shape[1]
        elif a.shape[1] != features:
            raise ValueError(f"X[{i}]: {a.shape[1]} features per step, but X[0] has {features}; "
                             f"every sequence needs the same number of features")
        arrays.append(a)
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.intp)
    x = np.zeros((len(arrays), lengths.max(), features), dtype=np.dtype(dtype))
    for i, a in enumerate(arrays):
        x[i, :a.shape[0]] = a
    return x, lengths


def _pad_targets(targets, T):
    arrays = [np.asarray(t, dtype=np.float64) for t in targets]
    T = max(a.shape[0] for a in arrays) if T is None else T
    out = np.zeros((len(arrays), T) + arrays[0].shape[1:])
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return out


def _step_mask(n, T, lengths):
    if lengths is None:
        return np.ones((n, T), dtype=bool)
    return np.arange(T)[None, :] < lengths[:, None]
