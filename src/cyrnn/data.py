"""Data utilities: a character vocabulary, language-model batches, sliding windows, splits.

Everything here produces the time-major arrays ``cyrnn.RNN`` takes: token ids ``(T, B)`` for a
language model, values ``(T, B, F)`` for regression.

A character model, end to end::

    >>> import numpy as np
    >>> from cyrnn.data import Vocabulary, random_batches, train_val_split
    >>> text = "hello world, " * 20
    >>> vocab = Vocabulary.from_text(text)
    >>> ids = vocab.encode(text)                       # (N,) np.intp
    >>> train, val = train_val_split(ids, 0.1)          # the tail is the validation part
    >>> batches = random_batches(train, batch_size=4, seq_len=10, rng=0)
    >>> for x, y in batches:                            # x, y (10, 4); y is x one step later
    ...     pass                                        # model.loss_and_grad(x, y), state reset
    >>> vocab.decode(x[1:, 0]) == vocab.decode(y[:-1, 0])
    True

Randomness comes only from the ``rng`` arguments (a ``numpy.random.Generator`` or an int seed),
so results are reproducible; nothing here prints, and problems in the data are reported with
``warnings.warn`` or an exception naming the argument.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Optional, Union

import numpy as np
import numpy.typing as npt

from . import _checks
from ._typing import FloatArray, IntArray, Seed

__all__ = [
    "UnknownCharacterWarning",
    "Vocabulary",
    "SequentialBatches",
    "RandomBatches",
    "sequential_batches",
    "random_batches",
    "sliding_windows",
    "train_val_split",
]

_ERRORS = ("strict", "replace", "ignore")
_JSON_FORMAT = "cyrnn.Vocabulary"
_JSON_VERSION = 1
_JSON_KEYS = {"format", "version", "chars", "unknown"}
# how many distinct unknown characters a message lists
_MAX_LISTED = 10


class UnknownCharacterWarning(UserWarning):
    """Text given to ``Vocabulary.encode`` had characters outside the vocabulary, which were
    replaced by the unknown token (``errors="replace"``) or dropped (``errors="ignore"``)."""


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------


def _generator(rng):
    """A ``numpy.random.Generator`` from a Generator or a non-negative int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"rng: expected a seed >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected a numpy.random.Generator or an int seed, got {rng!r}")


def _token_ids(ids):
    """``ids`` as a fresh 1-D array of np.intp, checked: integers, non-negative."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids: expected a 1-D array (N,), got shape {arr.shape}")
    if arr.size == 0:  # an empty list comes out float64; its dtype says nothing
        return np.zeros(0, dtype=np.intp)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ids: expected integer token ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError(f"ids: expected ids >= 0, got {arr.min()} at position {int(arr.argmin())}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.intp).max:
        raise ValueError(f"ids: id {arr.max()} does not fit np.intp")
    return np.array(arr, dtype=np.intp, copy=True)


def _code_points(text):
    """The code points of ``text`` as a (N,) uint32 array (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _text_of(code_points):
    """The str of a uint32 array of code points (inverse of ``_code_points``)."""
    return np.asarray(code_points, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


# ---------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------


class Vocabulary:
    """A character vocabulary: id ``i`` stands for the character ``chars[i]``.

    Characters are Python ``str`` characters (Unicode code points, not grapheme clusters).
    Build one from a corpus with ``Vocabulary.from_text``; the constructor takes the characters in
    id order, as stored by ``to_json``.

    Parameters
    ----------
    chars : iterable of str
        The distinct characters, each a str of length 1, in id order.
    unknown : str or None
        The character that stands for characters outside the vocabulary (e.g. ``"\\ufffd"``);
        it must be one of ``chars``. ``None``: no unknown token, so ``encode`` with
        ``errors="replace"`` is unavailable.

    Attributes
    ----------
    chars : tuple of str
        The characters in id order.
    unknown : str or None
        The unknown-token character.
    unknown_id : int or None
        Its id.

    Examples
    --------
    >>> vocab = Vocabulary.from_text("abracadabra", unknown="?")
    >>> vocab.chars
    ('?', 'a', 'b', 'c', 'd', 'r')
    >>> vocab.encode("cab")
    array([3, 1, 2])
    >>> vocab.decode([5, 1])
    'ra'
    """

    __slots__ = ("_chars", "_unknown", "_unknown_id", "_sorted_codes", "_ids_of_sorted", "_codes")

    def __init__(self, chars: Iterable[str], *, unknown: Optional[str] = None) -> None:
        try:
            chars = tuple(chars)
        except TypeError:
            raise TypeError(f"chars: expected an iterable of characters, got {chars!r}") from None
        for c in chars:
            if not isinstance(c, str):
                raise TypeError(f"chars: expected str characters, got {c!r} ({type(c).__name__})")
            if len(c) != 1:
                raise ValueError(f"chars: expected single characters, got {c!r} (length {len(c)})")
        if not chars:
            raise ValueError("chars: expected at least one character, got none")
        duplicates = sorted(c for c, n in Counter(chars).items() if n > 1)
        if duplicates:
            raise ValueError(f"chars: duplicate characters {duplicates!r}")
        if unknown is not None:
            if not isinstance(unknown, str):
                raise TypeError(f"unknown: expected a character or None, got {unknown!r}")
            if unknown not in chars:
                raise ValueError(f"unknown: {unknown!r} is not one of the characters")
        self._chars = chars
        self._unknown = unknown
        self._unknown_id = None if unknown is None else chars.index(unknown)
        self._codes = _code_points("".join(chars))
        order = np.argsort(self._codes, kind="stable")
        self._sorted_codes = self._codes[order]
        self._ids_of_sorted = order.astype(np.intp)

    @classmethod
    def from_text(cls, text: str, *, unknown: Optional[str] = None,
                  min_count: int = 1) -> Vocabulary:
        """The vocabulary of the characters of ``text``, sorted by code point.

        Parameters
        ----------
        text : str
            The corpus.
        unknown : str or None
            A character to reserve as the unknown token (e.g. ``"\\ufffd"``); it gets an id in
            the sorted order like any character, whether or not it occurs in ``text``.
        min_count : int
            Characters occurring fewer times are left out of the vocabulary: ``encode`` maps
            them to ``unknown`` with ``errors="replace"``. Without an unknown token they are
            simply unknown, so encoding ``text`` then needs ``errors="ignore"``.

        Returns
        -------
        Vocabulary

        Raises
        ------
        ValueError
            If no character is left (empty ``text``, or ``min_count`` above every count, and no
            unknown token).
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        min_count = _checks.int_at_least("min_count", min_count, 1)
        if unknown is not None and not isinstance(unknown, str):
            raise TypeError(f"unknown: expected a single character or None, got {unknown!r}")
        if unknown is not None and len(unknown) != 1:
            raise ValueError(f"unknown: expected a single character, got {unknown!r}")
        counts = Counter(text)
        kept = {c for c, n in counts.items() if n >= min_count}
        if unknown is not None:
            kept.add(unknown)
        if not kept:
            detail = "text is empty" if not text else f"no character occurs {min_count} times"
            raise ValueError(f"text: no characters for the vocabulary ({detail})")
        return cls(sorted(kept), unknown=unknown)

    # -- properties ----------------------------------------------------------------------------

    @property
    def chars(self) -> tuple[str, ...]:
        """The characters in id order (tuple of str)."""
        return self._chars

    @property
    def unknown(self) -> Optional[str]:
        """The unknown-token character, or None."""
        return self._unknown

    @property
    def unknown_id(self) -> Optional[int]:
        """The id of the unknown token, or None."""
        return self._unknown_id

    def __len__(self) -> int:
        return len(self._chars)

    def __contains__(self, char: object) -> bool:
        return isinstance(char, str) and len(char) == 1 and char in self._chars

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._chars == other._chars and self._unknown == other._unknown

    def __hash__(self) -> int:
        return hash((self._chars, self._unknown))

    def __repr__(self) -> str:
        shown = "".join(self._chars)
        if len(shown) > 40:
            shown = shown[:30] + "..." + shown[-7:]
        return f"Vocabulary(size={len(self)}, unknown={self._unknown!r}, chars={shown!r})"

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str,
               errors: Literal["strict", "replace", "ignore"] = "strict") -> IntArray:
        """The ids of the characters of ``text``.

        Parameters
        ----------
        text : str
        errors : {"strict", "replace", "ignore"}
            What to do with characters outside the vocabulary. ``"strict"``: raise ValueError.
            ``"replace"``: encode them as the unknown token (the vocabulary must have one, else
            ValueError, whatever the text). ``"ignore"``: leave them out. Both of the latter
            warn with ``UnknownCharacterWarning``, listing the characters and their counts.

        Returns
        -------
        ndarray of np.intp, shape (N,)
            ``N = len(text)``, fewer with ``"ignore"``.

        Raises
        ------
        ValueError
            With ``errors="strict"``, on unknown characters; the message lists up to 10 of them,
            most frequent first, with counts.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        if errors not in _ERRORS:
            raise ValueError(f"errors: expected 'strict', 'replace' or 'ignore', got {errors!r}")
        if errors == "replace" and self._unknown_id is None:
            raise ValueError(
                "errors: 'replace' needs a vocabulary with an unknown token "
                "(Vocabulary.from_text(..., unknown='\\ufffd')); use 'strict' or 'ignore'"
            )
        codes = _code_points(text)
        pos = np.searchsorted(self._sorted_codes, codes)
        pos_clipped = np.minimum(pos, len(self._sorted_codes) - 1)
        known = self._sorted_codes[pos_clipped] == codes
        ids = self._ids_of_sorted[pos_clipped]
        if known.all():
            return ids
        summary = _unknown_summary(codes[~known])
        if errors == "strict":
            raise ValueError(f"text: {summary}; pass errors='replace' or 'ignore' to encode anyway")
        if errors == "replace":
            ids[~known] = self._unknown_id
            action = f"replaced by the unknown token {self._unknown!r}"
        else:
            ids = ids[known]
            action = "dropped"
        warnings.warn(f"text: {summary}; {action}", UnknownCharacterWarning, stacklevel=2)
        return ids

    def decode(self, ids: npt.ArrayLike) -> str:
        """The text of a sequence of ids.

        Parameters
        ----------
        ids : array_like of int, shape (N,)
            E.g. one column ``x[:, b]`` of a ``(T, B)`` batch.

        Returns
        -------
        str
            Of length ``N``.

        Raises
        ------
        ValueError
            If an id is outside ``[0, len(self))``; the message names the first bad id and its
            position.
        """
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"ids: expected a 1-D sequence of ids (N,), got shape {arr.shape}")
        if arr.size == 0:
            return ""
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids: expected integer ids, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= len(self))
        if bad.any():
            where = np.flatnonzero(bad)
            raise ValueError(
                f"ids: id {arr[where[0]]} at position {where[0]} is out of range "
                f"[0, {len(self)}) ({where.size} bad id{'s' if where.size > 1 else ''})"
            )
        return _text_of(self._codes[arr])

    # -- serialization -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict of the vocabulary (for model files).

        Returns
        -------
        dict
            ``{"format": "cyrnn.Vocabulary", "version": 1, "chars": [str, ...],
            "unknown": str or None}``, ``chars`` in id order. ``Vocabulary.from_json`` reads it.
        """
        return {
            "format": _JSON_FORMAT,
            "version": _JSON_VERSION,
            "chars": list(self._chars),
            "unknown": self._unknown,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        """The vocabulary stored by ``to_json``.

        Parameters
        ----------
        data : dict
            Needs ``"chars"`` (a list of single characters, or a str of them, in id order);
            ``"unknown"`` (a character or None), ``"format"`` and ``"version"`` are optional.

        Returns
        -------
        Vocabulary

        Raises
        ------
        ValueError
            On anything malformed: not a dict, missing or unexpected keys, a wrong format or
            version, characters that are not single-character strings, duplicates, an unknown
            token outside the characters.
        """
        where = "vocabulary JSON"
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a dict, got {type(data).__name__}")
        extra = sorted(map(str, set(data) - _JSON_KEYS))
        if extra:
            raise ValueError(f"{where}: unexpected keys {extra}")
        if "chars" not in data:
            raise ValueError(f"{where}: missing key 'chars'")
        if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
            raise ValueError(f"{where}: 'format' is {data['format']!r}, expected {_JSON_FORMAT!r}")
        version = data.get("version", _JSON_VERSION)
        if version != _JSON_VERSION or isinstance(version, bool):
            raise ValueError(f"{where}: unsupported 'version' {version!r}, expected {_JSON_VERSION}")
        chars = data["chars"]
        if isinstance(chars, str):
            chars = list(chars)
        if not isinstance(chars, list):
            raise ValueError(f"{where}: 'chars' must be a list of characters, got {type(chars).__name__}")
        unknown = data.get("unknown")
        if unknown is not None and not isinstance(unknown, str):
            raise ValueError(f"{where}: 'unknown' must be a character or null, got {unknown!r}")
        try:
            return cls(chars, unknown=unknown)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc


def _unknown_summary(unknown_codes):
    """'N characters not in the vocabulary (K distinct): 'x' x3, ...' for a message."""
    values, counts = np.unique(unknown_codes, return_counts=True)
    order = np.lexsort((values, -counts))  # most frequent first, then by code point
    listed = ", ".join(
        f"{_text_of(values[i:i + 1])!r} x{counts[i]}" for i in order[:_MAX_LISTED]
    )
    if len(values) > _MAX_LISTED:
        listed += f", ... ({len(values) - _MAX_LISTED} more)"
    total = int(counts.sum())
    plural = "s" if total > 1 else ""
    return f"{total} character{plural} not in the vocabulary ({len(values)} distinct): {listed}"


# ---------------------------------------------------------------------------------------------
# language-model batches
# ---------------------------------------------------------------------------------------------


class _LMBatches:
    """Shared part of the two partitionings: checked arguments, length, repr."""

    _num_batches: int  # set by each subclass

    def __init__(self, ids, batch_size, seq_len):
        self._ids = _token_ids(ids)
        self._batch_size = _checks.int_at_least("batch_size", batch_size, 1)
        self._seq_len = _checks.int_at_least("seq_len", seq_len, 1)

    @property
    def batch_size(self) -> int:
        """Columns ``B`` of each batch."""
        return self._batch_size

    @property
    def seq_len(self) -> int:
        """Steps ``S`` of each batch."""
        return self._seq_len

    @property
    def num_tokens(self) -> int:
        """Length ``N`` of the corpus."""
        return self._ids.size

    def _check_enough(self, largest_offset, offset_note):
        """ValueError unless one batch fits after ``largest_offset``."""
        B, S = self.batch_size, self.seq_len
        needed = B * S + 1 + largest_offset
        if self.num_tokens < needed:
            raise ValueError(
                f"ids: {self.num_tokens} tokens are too few for one batch of batch_size={B} "
                f"x seq_len={S}: need at least {needed} (batch_size * seq_len + 1 for the "
                f"shifted target{offset_note})"
            )

    def __len__(self) -> int:
        return self._num_batches

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tokens={self.num_tokens}, batch_size={self.batch_size}, "
            f"seq_len={self.seq_len}, batches={len(self)})"
        )


class SequentialBatches(_LMBatches):
    """Sequential partitioning of a corpus into ``batch_size`` streams; see
    ``sequential_batches``, which makes these."""

    def __init__(self, ids: npt.ArrayLike, batch_size: int, seq_len: int, *,
                 offset: Optional[int] = None, rng: Seed = None) -> None:
        super().__init__(ids, batch_size, seq_len)
        S = self.seq_len
        if offset is not None and rng is not None:
            raise ValueError("offset, rng: give an explicit offset or an rng for a random one, not both")
        if offset is not None:
            offset = _checks.int_at_least("offset", offset, 0)
            if offset >= S:
                raise ValueError(f"offset: expected 0 <= offset < seq_len = {S}, got {offset}")
        self._rng = None if rng is None else _generator(rng)
        self._offset = 0 if offset is None and self._rng is None else offset
        # the count of the largest offset an epoch can start at, the same every epoch
        if self._rng is None:
            largest, note = self._offset, f" + offset {self._offset}" if self._offset else ""
        else:
            largest, note = S - 1, f" + the largest random offset, {S - 1}" if S > 1 else ""
        self._check_enough(largest, note)
        self._num_batches = self._stream_length(largest) // S

    @property
    def offset(self) -> Optional[int]:
        """The fixed offset, or None when each epoch draws one from ``rng``."""
        return self._offset

    def _stream_length(self, offset):
        return (self.num_tokens - offset - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[IntArray, IntArray]]:
        offset = self._offset if self._rng is None else int(self._rng.integers(0, self.seq_len))
        B, S = self.batch_size, self.seq_len
        L = self._stream_length(offset)
        # stream b is the corpus positions offset + b*L .. offset + (b+1)*L - 1 (+1 for targets)
        inputs = self._ids[offset:offset + B * L].reshape(B, L)
        targets = self._ids[offset + 1:offset + 1 + B * L].reshape(B, L)
        return self._generate(inputs, targets)

    def _generate(self, inputs, targets):
        S = self.seq_len
        for k in range(self._num_batches):
            cols = slice(k * S, (k + 1) * S)
            yield np.ascontiguousarray(inputs[:, cols].T), np.ascontiguousarray(targets[:, cols].T)


class RandomBatches(_LMBatches):
    """Random partitioning of a corpus into shuffled subsequences; see ``random_batches``,
    which makes these."""

    def __init__(self, ids: npt.ArrayLike, batch_size: int, seq_len: int, *,
                 rng: Union[np.random.Generator, int]) -> None:
        super().__init__(ids, batch_size, seq_len)
        self._rng = _generator(rng)
        largest = self.seq_len - 1
        note = "" if largest == 0 else f" + the largest random offset, {largest}"
        self._check_enough(largest, note)
        self._num_batches = self._num_subsequences(largest) // self.batch_size

    def _num_subsequences(self, offset):
        return (self.num_tokens - offset - 1) // self.seq_len

    def __iter__(self) -> Iterator[tuple[IntArray, IntArray]]:
        S, B = self.seq_len, self.batch_size
        offset = int(self._rng.integers(0, S))
        starts = offset + S * np.arange(self._num_subsequences(offset))
        starts = self._rng.permutation(starts)[: self._num_batches * B]
        return self._generate(starts)

    def _generate(self, starts):
        S, B = self.seq_len, self.batch_size
        steps = np.arange(S)[:, None]
        for k in range(self._num_batches):
            positions = steps + starts[k * B:(k + 1) * B][None, :]  # (S, B) corpus positions
            yield self._ids[positions], self._ids[positions + 1]


def sequential_batches(ids: npt.ArrayLike, batch_size: int, seq_len: int, *,
                       offset: Optional[int] = None, rng: Seed = None) -> SequentialBatches:
    """Language-model batches from sequential partitioning: the state carries across batches.

    After skipping ``offset`` tokens, the corpus is cut into ``batch_size`` contiguous streams
    of equal length ``L = (N - offset - 1) // batch_size`` (the ragged remainder is dropped);
    stream ``b`` is column ``b`` of every batch, read ``seq_len`` steps at a time. So column
    ``b`` of batch ``k + 1`` starts at the corpus position right after the one where column
    ``b`` of batch ``k`` ended: **carry the hidden state** from one batch to the next
    (``h0`` = the previous ``h_last``; truncate the gradient there, which ``loss_and_grad``
    does since ``h0`` is an input) and reset it at the start of each epoch::

        for epoch in range(epochs):
            h = None
            for x, y in batches:
                loss, grads, h = model.loss_and_grad(x, y, h0=h)

    Parameters
    ----------
    ids : array_like of int, shape (N,)
        The corpus as token ids (e.g. ``Vocabulary.encode``). It is copied.
    batch_size : int
        Streams ``B``, the columns of each batch.
    seq_len : int
        Steps ``S`` per batch.
    offset : int, optional
        Tokens to skip at the start, ``0 <= offset < seq_len``; default 0. Not with ``rng``.
    rng : numpy.random.Generator or int, optional
        Draw the offset uniformly from ``[0, seq_len)`` at the start of every epoch (every
        iteration over the result), so the batch boundaries move between epochs. An int seeds
        a generator made once, so the epochs differ from each other but are reproducible.

    Returns
    -------
    SequentialBatches
        Iterable of ``(x, y)``, both ``(S, B)`` np.intp arrays, time-major, ``y[t, b]`` the
        token after ``x[t, b]`` in the corpus. Iterate once per epoch. ``len()`` is the number
        of batches, ``L // S`` (with ``rng``, that of the largest offset, ``S - 1``, so it is
        the same every epoch; a smaller drawn offset leaves a little more of the tail unread).

    Raises
    ------
    ValueError
        If ``ids`` cannot fill one batch: it needs at least ``B * S + 1 + offset`` tokens
        (``offset = S - 1`` with ``rng``).
    """
    return SequentialBatches(ids, batch_size, seq_len, offset=offset, rng=rng)


def random_batches(ids: npt.ArrayLike, batch_size: int, seq_len: int, *,
                   rng: Union[np.random.Generator, int]) -> RandomBatches:
    """Language-model batches from random partitioning: independent, shuffled subsequences.

    Every epoch (every iteration over the result) draws an offset uniformly from
    ``[0, seq_len)``, cuts the corpus after it into non-overlapping subsequences of
    ``seq_len`` tokens (each with the token after it for the target; the ragged tail is
    dropped), shuffles them and yields them ``batch_size`` at a time. An epoch uses each
    subsequence at most once; the ``n_subsequences % batch_size`` left over are skipped.
    Neighbouring columns or batches are not adjacent in the corpus, so **reset the hidden state
    for every batch** (``h0=None``).

    Parameters
    ----------
    ids : array_like of int, shape (N,)
        The corpus as token ids. It is copied.
    batch_size : int
        Subsequences ``B`` per batch.
    seq_len : int
        Steps ``S`` per subsequence.
    rng : numpy.random.Generator or int
        The source of the offsets and shuffles. An int seeds a generator made once, so epochs
        differ from each other but the whole run is reproducible.

    Returns
    -------
    RandomBatches
        Iterable of ``(x, y)``, both ``(S, B)`` np.intp arrays, time-major, ``y[t, b]`` the
        token after ``x[t, b]`` in the corpus. ``len()`` is the number of batches per epoch,
        ``((N - S) // S) // B``: that of the largest offset, ``S - 1``, so the same every
        epoch.

    Raises
    ------
    ValueError
        If ``ids`` cannot fill one batch whatever the offset: it needs at least
        ``B * S + S`` tokens.
    """
    return RandomBatches(ids, batch_size, seq_len, rng=rng)


# ---------------------------------------------------------------------------------------------
# time series and splits
# ---------------------------------------------------------------------------------------------


def sliding_windows(series: npt.ArrayLike, window: int, *, horizon: int = 1,
                    stride: int = 1) -> tuple[FloatArray, FloatArray]:
    """Windows of a time series and, at every step, the value ``horizon`` steps later.

    Window ``m`` covers steps ``s = m * stride .. s + window - 1``; its target is the same
    window shifted by ``horizon`` steps. The windows are all those that fit:
    ``M = (N - window - horizon) // stride + 1``.

    For many-to-one training (predict only after the whole window), take the last step of the
    targets, ``targets[-1]`` of shape ``(M, F)``, the value ``horizon`` steps after each window,
    and pass ``target_steps="last"`` to ``RNN.loss_and_grad``.

    Parameters
    ----------
    series : array_like of real numbers, shape (N,) or (N, F)
        The series, time along the first axis; ``(N,)`` means ``F = 1``. Integer series become
        float64, float arrays keep their dtype.
    window : int
        Steps per window ``T``.
    horizon : int
        How many steps ahead the targets are, ``>= 1``.
    stride : int
        Steps between the starts of consecutive windows, ``>= 1``.

    Returns
    -------
    inputs : ndarray, shape (window, M, F)
        ``inputs[t, m] = series[m * stride + t]``, time-major.
    targets : ndarray, shape (window, M, F)
        ``targets[t, m] = series[m * stride + t + horizon]``.

    Raises
    ------
    ValueError
        If ``series`` is shorter than ``window + horizon``, has NaN or Inf, or has more than two
        dimensions.
    """
    window = _checks.int_at_least("window", window, 1)
    horizon = _checks.int_at_least("horizon", horizon, 1)
    stride = _checks.int_at_least("stride", stride, 1)
    values = np.asarray(series)
    if values.dtype.kind not in "fiu":
        raise TypeError(f"series: expected real numbers, got dtype {values.dtype}")
    if values.ndim not in (1, 2):
        raise ValueError(f"series: expected shape (N,) or (N, F), got {values.shape}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if values.ndim == 1:
        values = values[:, None]
    N = values.shape[0]
    if N < window + horizon:
        raise ValueError(
            f"series: {N} steps are too few for window={window} and horizon={horizon}: "
            f"need at least window + horizon = {window + horizon}"
        )
    if not np.isfinite(values).all():
        raise ValueError("series: contains NaN or Inf")
    M = (N - window - horizon) // stride + 1
    positions = np.arange(window)[:, None] + stride * np.arange(M)[None, :]  # (window, M)
    return values[positions], values[positions + horizon]


def train_val_split(data: npt.ArrayLike,
                    val_fraction: float = 0.1) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Split along the first axis: the head for training, the tail for validation.

    There is no shuffling: for a corpus or a time series the order is the data, and a tail kept
    whole tests on text or times the model has not seen. Shuffle windows yourself beforehand if
    the items are independent.

    Parameters
    ----------
    data : array_like, shape (N, ...)
        A 1-D id array, a series, or any array of items along the first axis.
    val_fraction : float
        Fraction for validation, ``0 < val_fraction < 1``; the validation part has
        ``ceil(val_fraction * N)`` items (up to float rounding: ``0.07 * 100`` gives 7, not 8).

    Returns
    -------
    train : ndarray, shape (N - n_val, ...)
        ``data[:N - n_val]``, a view when ``data`` is an ndarray.
    val : ndarray, shape (n_val, ...)
        ``data[N - n_val:]``, a view when ``data`` is an ndarray.

    Raises
    ------
    ValueError
        If ``val_fraction`` is outside ``(0, 1)`` or either part would be empty.
    """
    if isinstance(val_fraction, (bool, np.bool_)) or not isinstance(val_fraction, numbers.Real):
        raise TypeError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    val_fraction = float(val_fraction)
    if not 0.0 < val_fraction < 1.0:  # also false for NaN
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    arr = np.asarray(data)
    if arr.ndim == 0:
        raise ValueError("data: expected an array with a first axis to split, got a scalar")
    n = arr.shape[0]
    n_val = math.ceil(round(val_fraction * n, 9))
    n_train = n - n_val
    if n_val < 1 or n_train < 1:
        raise ValueError(
            f"data: {n} items cannot give non-empty parts with val_fraction={val_fraction} "
            f"({n_train} train, {n_val} validation)"
        )
    return arr[:n_train], arr[n_train:]
