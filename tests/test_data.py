"""Tests of ``cyrnn.data``: the character vocabulary, the two language-model partitionings
(sequential and random, as defined in d2l.ai), sliding windows and the train/validation split.

The partitioning tests use the corpus ``ids = arange(N)`` (plus a constant), so every id is its
own corpus position and shifts, coverage and continuity can be read off the batches directly.
"""
import json
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyrnn.data import (
    RandomBatches,
    SequentialBatches,
    UnknownCharacterWarning,
    Vocabulary,
    random_batches,
    sequential_batches,
    sliding_windows,
    train_val_split,
)

TEXT = "hello world\nthe quick brown fox jumps over the lazy dog\n"
PROPERTY = settings(deadline=None, max_examples=50)

# -------------------------------------------------------------------------------------------
# vocabulary
# -------------------------------------------------------------------------------------------


def test_from_text_sorted_characters_and_round_trip():
    vocab = Vocabulary.from_text(TEXT)
    assert vocab.chars == tuple(sorted(set(TEXT)))
    assert len(vocab) == len(set(TEXT))
    ids = vocab.encode(TEXT)
    assert ids.dtype == np.intp and ids.shape == (len(TEXT),)
    assert ids.min() >= 0 and ids.max() < len(vocab)
    assert vocab.decode(ids) == TEXT
    assert [vocab.chars[i] for i in ids] == list(TEXT)
    assert vocab.unknown is None and vocab.unknown_id is None


def test_from_text_is_deterministic_whatever_the_character_order():
    a = Vocabulary.from_text(TEXT)
    b = Vocabulary.from_text(TEXT[::-1])
    assert a == b and a.chars == b.chars
    assert np.array_equal(a.encode(TEXT), b.encode(TEXT))


def test_non_ascii_and_surrogates_round_trip():
    text = "naïve café ☕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\t\udc80"
    vocab = Vocabulary.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.chars == tuple(sorted(set(text)))


@given(st.text(min_size=1, max_size=200))
@PROPERTY
def test_round_trip_property(text):
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab


def test_unknown_token_gets_an_id_in_sorted_order():
    vocab = Vocabulary.from_text("abc", unknown="\ufffd")
    assert vocab.chars == ("a", "b", "c", "\ufffd")
    assert vocab.unknown == "\ufffd" and vocab.unknown_id == 3
    user = Vocabulary.from_text("abc", unknown="#")
    assert user.chars == ("#", "a", "b", "c") and user.unknown_id == 0
    # an unknown character that also occurs in the text is not duplicated
    again = Vocabulary.from_text("a#b", unknown="#")
    assert again.chars == ("#", "a", "b")


def test_min_count_maps_rare_characters_to_unknown():
    text = "aaabbbc"  # c occurs once
    vocab = Vocabulary.from_text(text, unknown="?", min_count=2)
    assert vocab.chars == ("?", "a", "b")
    with pytest.warns(UnknownCharacterWarning, match=r"'c' x1"):
        ids = vocab.encode(text, errors="replace")
    assert vocab.decode(ids) == "aaabbb?"
    # without an unknown token, rare characters are simply not in the vocabulary
    plain = Vocabulary.from_text(text, min_count=2)
    assert plain.chars == ("a", "b")
    with pytest.raises(ValueError, match="'c' x1"):
        plain.encode(text)


def test_encode_strict_names_unknown_characters_with_counts():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(ValueError) as info:
        vocab.encode("abzzxzyz")
    message = str(info.value)
    assert message.startswith("text:")
    assert "6 characters not in the vocabulary (3 distinct)" in message
    # most frequent first, then by code point
    assert re.search(r"'z' x4, 'x' x1, 'y' x1", message)
    assert "errors=" in message


def test_encode_strict_lists_at_most_ten_unknown_characters():
    vocab = Vocabulary.from_text("a")
    unknown = "".join(chr(ord("A") + i) for i in range(15))
    with pytest.raises(ValueError) as info:
        vocab.encode(unknown)
    message = str(info.value)
    listed = re.findall(r"'[A-Z]' x1", message)
    assert len(listed) == 10
    assert "5 more" in message


def test_encode_replace_maps_to_unknown_and_warns():
    vocab = Vocabulary.from_text("abc", unknown="\ufffd")
    with pytest.warns(UnknownCharacterWarning) as record:
        ids = vocab.encode("a€b€é", errors="replace")
    assert len(record) == 1
    message = str(record[0].message)
    assert "'€' x2" in message and "'é' x1" in message and "replaced" in message
    assert record[0].filename == __file__  # stacklevel points at the caller
    assert ids.tolist() == [0, vocab.unknown_id, 1, vocab.unknown_id, vocab.unknown_id]
    assert vocab.decode(ids) == "a\ufffdb\ufffd\ufffd"


def test_encode_replace_needs_an_unknown_token():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(ValueError, match=r"errors: 'replace' needs a vocabulary with an unknown"):
        vocab.encode("abc", errors="replace")


def test_encode_ignore_drops_and_warns():
    vocab = Vocabulary.from_text("abc")
    with pytest.warns(UnknownCharacterWarning, match=r"2 characters .*'z' x2.*dropped"):
        ids = vocab.encode("azbzc", errors="ignore")
    assert vocab.decode(ids) == "abc"


def test_encode_known_text_does_not_warn():
    vocab = Vocabulary.from_text("abc", unknown="?")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for errors in ("strict", "replace", "ignore"):
            assert vocab.decode(vocab.encode("cab", errors=errors)) == "cab"
    assert vocab.encode("").shape == (0,)


def test_unknown_character_warning_is_a_user_warning():
    assert issubclass(UnknownCharacterWarning, UserWarning)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda v: v.encode(b"abc"), TypeError, "text"),
        (lambda v: v.encode("abc", errors="skip"), ValueError, "errors"),
        (lambda v: v.decode([0, 7, 1]), ValueError, r"ids: id 7 at position 1 .*\[0, 3\)"),
        (lambda v: v.decode([-1]), ValueError, "ids: id -1"),
        (lambda v: v.decode([0.0, 1.0]), TypeError, "ids"),
        (lambda v: v.decode([[0, 1]]), ValueError, "ids"),
    ],
)
def test_encode_decode_bad_arguments(call, exc, pattern):
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(exc, match=pattern):
        call(vocab)


def test_decode_accepts_batch_columns_and_empty():
    vocab = Vocabulary.from_text("abc")
    x = np.array([[0, 2], [1, 1]])
    assert vocab.decode(x[:, 1]) == "cb"
    assert vocab.decode([]) == ""
    assert vocab.decode(np.array([2], dtype=np.uint8)) == "c"


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(text=["a"]), TypeError, "text"),
        (dict(text=""), ValueError, "text.*empty"),
        (dict(text="ab", min_count=3), ValueError, "occurs 3 times"),
        (dict(text="ab", min_count=0), ValueError, "min_count"),
        (dict(text="ab", min_count=1.5), TypeError, "min_count"),
        (dict(text="ab", unknown="??"), ValueError, "unknown"),
        (dict(text="ab", unknown=1), TypeError, "unknown"),
    ],
)
def test_from_text_bad_arguments(kwargs, exc, pattern):
    text = kwargs.pop("text")
    with pytest.raises(exc, match=pattern):
        Vocabulary.from_text(text, **kwargs)


def test_from_text_min_count_with_unknown_keeps_only_unknown():
    vocab = Vocabulary.from_text("ab", unknown="?", min_count=5)
    assert vocab.chars == ("?",)


@pytest.mark.parametrize(
    "chars, unknown, exc, pattern",
    [
        (["a", "b", "a"], None, ValueError, r"duplicate characters \['a'\]"),
        (["a", "bc"], None, ValueError, "single characters"),
        (["a", 1], None, TypeError, "chars"),
        ([], None, ValueError, "chars"),
        (["a"], "b", ValueError, "unknown"),
        (5, None, TypeError, "chars"),
    ],
)
def test_constructor_validates(chars, unknown, exc, pattern):
    with pytest.raises(exc, match=pattern):
        Vocabulary(chars, unknown=unknown)


def test_constructor_keeps_the_given_id_order():
    vocab = Vocabulary(["z", "a"], unknown="z")
    assert vocab.encode("az").tolist() == [1, 0] and vocab.unknown_id == 0


def test_json_round_trip_through_a_string():
    vocab = Vocabulary.from_text(TEXT + "é☕", unknown="\ufffd")
    stored = json.dumps(vocab.to_json())
    loaded = Vocabulary.from_json(json.loads(stored))
    assert loaded == vocab and loaded.chars == vocab.chars and loaded.unknown_id == vocab.unknown_id
    assert np.array_equal(loaded.encode(TEXT), vocab.encode(TEXT))
    data = vocab.to_json()
    assert data["format"] == "cyrnn.Vocabulary" and data["version"] == 1
    assert data["chars"] == list(vocab.chars) and data["unknown"] == "\ufffd"


def test_json_minimal_form_is_accepted():
    assert Vocabulary.from_json({"chars": ["a", "b"]}) == Vocabulary(["a", "b"])
    assert Vocabulary.from_json({"chars": "ab", "unknown": "a"}) == Vocabulary("ab", unknown="a")


@pytest.mark.parametrize(
    "data, pattern",
    [
        (["a", "b"], "expected a dict"),
        ({}, "missing key 'chars'"),
        ({"chars": ["a"], "extra": 1}, r"unexpected keys \['extra'\]"),
        ({"chars": ["a"], "format": "other"}, "format"),
        ({"chars": ["a"], "version": 2}, "version"),
        ({"chars": ["a"], "version": True}, "version"),
        ({"chars": 3}, "'chars' must be a list"),
        ({"chars": ["a", 3]}, "str characters"),
        ({"chars": ["a", "bc"]}, "single characters"),
        ({"chars": ["a", "a"]}, "duplicate"),
        ({"chars": ["a"], "unknown": 0}, "'unknown'"),
        ({"chars": ["a"], "unknown": "b"}, "unknown"),
        ({"chars": []}, "chars"),
    ],
)
def test_bad_json_raises_value_error(data, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        Vocabulary.from_json(data)
    assert str(info.value).startswith("vocabulary JSON")


def test_equality_hash_and_repr():
    a = Vocabulary.from_text("abc", unknown="?")
    assert a == Vocabulary.from_text("cba", unknown="?")
    assert a != Vocabulary.from_text("abc")
    assert a != Vocabulary(["?", "b", "a", "c"], unknown="?")  # same set, other ids
    assert a != "abc?"
    assert hash(a) == hash(Vocabulary.from_text("cab", unknown="?"))
    assert repr(a) == "Vocabulary(size=4, unknown='?', chars='?abc')"
    long = Vocabulary([chr(0x100 + i) for i in range(100)])
    assert len(repr(long)) < 120 and "size=100" in repr(long)
    assert "a" in a and "z" not in a and 1 not in a


# -------------------------------------------------------------------------------------------
# language-model partitioning
# -------------------------------------------------------------------------------------------

BASE = 1000  # corpus ids = BASE + position, so an id tells its corpus position


def corpus(n):
    return BASE + np.arange(n)


def positions(batch):
    return batch - BASE


def check_batch(x, y, batch_size, seq_len):
    """Shape, dtype, and y = x shifted by one corpus position, within each column."""
    assert x.shape == y.shape == (seq_len, batch_size)
    assert x.dtype == y.dtype == np.intp
    assert x.flags.c_contiguous and y.flags.c_contiguous
    assert np.array_equal(y, x + 1)  # the next token in the corpus
    assert np.array_equal(np.diff(x, axis=0), np.ones((seq_len - 1, batch_size)))  # contiguous


def test_sequential_shapes_and_shift_on_a_real_corpus():
    vocab = Vocabulary.from_text(TEXT)
    ids = vocab.encode(TEXT * 5)
    batches = sequential_batches(ids, 3, 7)
    for x, y in batches:
        assert x.shape == y.shape == (7, 3)
        for b in range(3):
            assert vocab.decode(x[1:, b]) == vocab.decode(y[:-1, b])


def test_sequential_definition_small_example():
    # N = 21, B = 2, S = 3, offset 1: L = (21 - 1 - 1) // 2 = 9, streams 1..9 and 10..18
    batches = sequential_batches(np.arange(21), 2, 3, offset=1)
    got = list(batches)
    assert len(batches) == len(got) == 3
    assert got[0][0].tolist() == [[1, 10], [2, 11], [3, 12]]
    assert got[0][1].tolist() == [[2, 11], [3, 12], [4, 13]]
    assert got[2][0].tolist() == [[7, 16], [8, 17], [9, 18]]
    assert got[2][1][-1].tolist() == [10, 19]


def test_sequential_continuity_across_batches():
    batches = sequential_batches(corpus(503), 4, 6, offset=2)
    got = list(batches)
    assert len(got) == len(batches) > 3
    for x, y in got:
        check_batch(x, y, 4, 6)
    for (x0, _), (x1, _) in zip(got, got[1:]):
        # column b of batch k+1 starts right after where column b of batch k ended
        assert np.array_equal(x1[0], x0[-1] + 1)
    starts = positions(got[0][0][0])
    assert starts[0] == 2
    assert np.all(np.diff(starts) == (503 - 2 - 1) // 4)  # equal-length streams
    # no position is read twice, and the ragged remainder is dropped
    read = positions(np.concatenate([x.ravel() for x, _ in got]))
    assert len(np.unique(read)) == read.size


def test_sequential_random_offset_is_deterministic_and_varies():
    ids = corpus(400)
    first = [x.copy() for x, _ in sequential_batches(ids, 3, 10, rng=7)]
    again = [x.copy() for x, _ in sequential_batches(ids, 3, 10, rng=np.random.default_rng(7))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    batches = sequential_batches(ids, 3, 10, rng=0)
    offsets = {int(positions(next(iter(batches))[0][0, 0])) for _ in range(40)}
    assert offsets <= set(range(10)) and len(offsets) > 3  # new offset every epoch
    assert batches.offset is None


def test_sequential_len_is_the_same_every_epoch_with_rng():
    # N = 2 * 5 + 1 + 4 = 15: exactly enough for one batch at the largest offset, 4
    with pytest.raises(ValueError, match="need at least 15"):
        sequential_batches(corpus(14), 2, 5, rng=3)
    batches = sequential_batches(corpus(15), 2, 5, rng=3)
    assert len(batches) == 1
    for _ in range(20):
        got = list(batches)
        assert len(got) == 1
        check_batch(*got[0], 2, 5)


def test_sequential_default_offset_is_zero():
    batches = sequential_batches(corpus(50), 2, 4)
    x, _ = next(iter(batches))
    assert positions(x[0, 0]) == 0 and batches.offset == 0
    assert len(batches) == ((50 - 1) // 2) // 4


def test_random_small_example_matches_the_definition():
    # N = 23, S = 4: offset o, subsequences start at o, o+4, ... while start + 4 < 23 - 0
    rng = np.random.default_rng(0)
    batches = random_batches(corpus(23), 2, 4, rng=rng)
    assert len(batches) == ((23 - 4) // 4) // 2 == 2
    for _ in range(20):
        got = list(batches)
        assert len(got) == 2
        starts = positions(np.concatenate([x[0] for x, _ in got]))
        offset = starts.min() % 4
        assert np.all(starts % 4 == offset)
        assert np.all(starts + 4 <= 23 - 1)  # the target of the last step exists


def test_random_coverage_no_overlap_and_every_subsequence_once():
    N, B, S = 1003, 5, 8
    batches = random_batches(corpus(N), B, S, rng=1)
    for _ in range(5):
        got = list(batches)
        assert len(got) == len(batches)
        for x, y in got:
            check_batch(x, y, B, S)
        starts = positions(np.concatenate([x[0] for x, _ in got]))
        assert len(np.unique(starts)) == starts.size  # each subsequence at most once
        offset = starts[0] % S
        assert np.all((starts - offset) % S == 0)  # all on the grid of one offset
        read = positions(np.concatenate([x.ravel() for x, _ in got]))
        assert len(np.unique(read)) == read.size  # no overlap
        available = (N - offset - 1) // S
        # as many batches as the largest offset allows, so the same number every epoch
        assert starts.size == len(batches) * B == (((N - S) // S) // B) * B
        assert set(starts) <= set(offset + S * np.arange(available))


def test_random_offset_changes_between_epochs():
    S = 6
    batches = random_batches(corpus(200), 3, S, rng=2)
    offsets = {int(positions(next(iter(batches))[0][0, 0])) % S for _ in range(40)}
    assert len(offsets) > 3  # the grid of subsequences moves


def test_random_is_deterministic_and_seeds_differ():
    ids = corpus(600)

    def epoch(rng):
        return np.stack([x for x, _ in random_batches(ids, 4, 5, rng=rng)])

    assert np.array_equal(epoch(11), epoch(11))
    assert np.array_equal(epoch(11), epoch(np.random.default_rng(11)))
    assert not np.array_equal(epoch(11), epoch(12))
    batches = random_batches(ids, 4, 5, rng=11)
    first, second = [np.stack([x for x, _ in batches]) for _ in range(2)]
    assert not np.array_equal(first, second)  # a new shuffle each epoch


def test_random_batches_shuffle_the_order():
    batches = random_batches(corpus(2000), 1, 10, rng=5)
    starts = [int(positions(x[0, 0])) for x, _ in batches]
    assert starts != sorted(starts)


def test_iteration_draws_when_iter_is_called():
    batches = random_batches(corpus(300), 2, 5, rng=0)
    it1, it2 = iter(batches), iter(batches)
    ref = random_batches(corpus(300), 2, 5, rng=0)
    r1, r2 = iter(ref), iter(ref)
    # consuming in another order does not change which epoch got which draw
    b2 = [x.copy() for x, _ in it2]
    b1 = [x.copy() for x, _ in it1]
    assert all(np.array_equal(a, b) for a, b in zip(b1, [x for x, _ in r1]))
    assert all(np.array_equal(a, b) for a, b in zip(b2, [x for x, _ in r2]))


def test_batches_copy_the_corpus_and_yield_fresh_arrays():
    ids = corpus(100)
    batches = sequential_batches(ids, 2, 5)
    ids[:] = 0
    x, y = next(iter(batches))
    assert positions(x[0, 0]) == 0 and x.max() > 0
    x[:] = -1
    x2, _ = next(iter(batches))
    assert x2.min() >= 0


@given(
    n=st.integers(1, 400),
    batch_size=st.integers(1, 9),
    seq_len=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    method=st.sampled_from(["sequential", "sequential_rng", "random"]),
)
@PROPERTY
def test_partitioning_properties(n, batch_size, seq_len, seed, method):
    ids = corpus(n)
    largest_offset = 0 if method == "sequential" else seq_len - 1
    needed = batch_size * seq_len + 1 + largest_offset
    make = {
        "sequential": lambda: sequential_batches(ids, batch_size, seq_len),
        "sequential_rng": lambda: sequential_batches(ids, batch_size, seq_len, rng=seed),
        "random": lambda: random_batches(ids, batch_size, seq_len, rng=seed),
    }[method]
    if n < needed:
        with pytest.raises(ValueError, match=f"need at least {needed}"):
            make()
        return
    batches = make()
    got = list(batches)
    assert len(got) == len(batches) >= 1
    for x, y in got:
        check_batch(x, y, batch_size, seq_len)
        assert positions(y).max() < n
    read = positions(np.concatenate([x.ravel() for x, _ in got]))
    assert len(np.unique(read)) == read.size  # no token is an input twice in an epoch
    if method.startswith("sequential"):
        for (x0, _), (x1, _) in zip(got, got[1:]):
            assert np.array_equal(x1[0], x0[-1] + 1)
        offset = positions(got[0][0][0, 0])
        stream = (n - offset - 1) // batch_size
        assert np.all(np.diff(positions(got[0][0][0])) == stream)
        expected_len = ((n - largest_offset - 1) // batch_size) // seq_len
    else:
        expected_len = ((n - seq_len) // seq_len) // batch_size
    assert len(batches) == expected_len
    # determinism: the same seed gives the same epoch
    again = list(make())
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, again))


@pytest.mark.parametrize("make", [
    lambda ids, **kw: sequential_batches(ids, **kw),
    lambda ids, **kw: random_batches(ids, rng=0, **kw),
])
@pytest.mark.parametrize(
    "ids, kwargs, exc, pattern",
    [
        (np.zeros((4, 5), int), {}, ValueError, r"ids: expected a 1-D array"),
        (np.zeros(50), {}, TypeError, "ids: expected integer"),
        (np.array([1, -2] * 25), {}, ValueError, "ids: expected ids >= 0"),
        (np.arange(50), dict(batch_size=0), ValueError, "batch_size"),
        (np.arange(50), dict(batch_size=2.0), TypeError, "batch_size"),
        (np.arange(50), dict(seq_len=0), ValueError, "seq_len"),
        (np.arange(50), dict(seq_len=True), TypeError, "seq_len"),
        (np.arange(6), {}, ValueError, r"ids: 6 tokens are too few .* need at least"),
        ([], {}, ValueError, "ids: 0 tokens"),
    ],
)
def test_partitioning_bad_arguments(make, ids, kwargs, exc, pattern):
    kw = dict(batch_size=2, seq_len=3)
    kw.update(kwargs)
    with pytest.raises(exc, match=pattern):
        make(ids, **kw)


def test_too_few_tokens_message_says_how_many():
    with pytest.raises(ValueError, match=r"need at least 7 .*offset 0|need at least 7"):
        sequential_batches(np.arange(6), 2, 3)
    sequential_batches(np.arange(7), 2, 3)
    with pytest.raises(ValueError, match=r"need at least 9 .*offset 2"):
        sequential_batches(np.arange(8), 2, 3, offset=2)
    with pytest.raises(ValueError, match=r"need at least 9 .*random offset, 2"):
        random_batches(np.arange(8), 2, 3, rng=0)
    assert len(random_batches(np.arange(9), 2, 3, rng=0)) == 1


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(offset=3), ValueError, r"offset: expected 0 <= offset < seq_len = 3"),
        (dict(offset=-1), ValueError, "offset"),
        (dict(offset=1.0), TypeError, "offset"),
        (dict(offset=1, rng=0), ValueError, "offset, rng"),
        (dict(rng="seed"), TypeError, "rng"),
        (dict(rng=-1), ValueError, "rng"),
    ],
)
def test_sequential_offset_and_rng_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sequential_batches(np.arange(100), 2, 3, **kwargs)


def test_random_batches_needs_an_rng():
    with pytest.raises(TypeError, match="rng"):
        random_batches(np.arange(100), 2, 3, rng=None)
    with pytest.raises(TypeError, match="rng"):
        random_batches(np.arange(100), 2, 3)  # keyword required


def test_batch_objects_types_and_repr():
    s = sequential_batches(np.arange(100), 2, 3)
    r = random_batches(np.arange(100), 2, 3, rng=0)
    assert isinstance(s, SequentialBatches) and isinstance(r, RandomBatches)
    assert (s.batch_size, s.seq_len, s.num_tokens) == (2, 3, 100)
    assert repr(s) == f"SequentialBatches(num_tokens=100, batch_size=2, seq_len=3, batches={len(s)})"
    assert "RandomBatches" in repr(r)


def test_batches_train_a_model():
    """The batches are what ``RNN.loss_and_grad`` takes, carrying state for sequential ones."""
    from cyrnn import RNN

    vocab = Vocabulary.from_text(TEXT)
    ids = vocab.encode(TEXT * 4)
    model = RNN(len(vocab), 8, len(vocab), output="softmax", seed=0, backend="numpy")
    h = None
    for x, y in sequential_batches(ids, 2, 5):
        loss, grads, h = model.loss_and_grad(x, y, h0=h)
        assert np.isfinite(loss) and h.shape == (2, 8)
    for x, y in random_batches(ids, 2, 5, rng=0):
        loss, _, _ = model.loss_and_grad(x, y)
        assert np.isfinite(loss)


# -------------------------------------------------------------------------------------------
# sliding windows
# -------------------------------------------------------------------------------------------


def test_sliding_windows_values_1d():
    series = np.arange(10.0)
    inputs, targets = sliding_windows(series, 3)
    assert inputs.shape == targets.shape == (3, 7, 1)
    assert inputs[:, 0, 0].tolist() == [0, 1, 2] and targets[:, 0, 0].tolist() == [1, 2, 3]
    assert inputs[:, 6, 0].tolist() == [6, 7, 8] and targets[:, 6, 0].tolist() == [7, 8, 9]
    # many-to-one: the last step of the targets is the value after each window
    assert targets[-1, :, 0].tolist() == [3, 4, 5, 6, 7, 8, 9]


def test_sliding_windows_horizon_stride_and_features():
    series = np.arange(40.0).reshape(20, 2)  # series[t] = [2t, 2t + 1]
    inputs, targets = sliding_windows(series, 4, horizon=3, stride=5)
    M = (20 - 4 - 3) // 5 + 1
    assert M == 3 and inputs.shape == targets.shape == (4, M, 2)
    for m in range(M):
        for t in range(4):
            assert np.array_equal(inputs[t, m], series[5 * m + t])
            assert np.array_equal(targets[t, m], series[5 * m + t + 3])


@given(
    n=st.integers(1, 60),
    f=st.integers(1, 3),
    window=st.integers(1, 10),
    horizon=st.integers(1, 5),
    stride=st.integers(1, 4),
)
@PROPERTY
def test_sliding_windows_property(n, f, window, horizon, stride):
    series = np.arange(n * f, dtype=np.float64).reshape(n, f)
    if n < window + horizon:
        with pytest.raises(ValueError, match=f"need at least window \\+ horizon = {window + horizon}"):
            sliding_windows(series, window, horizon=horizon, stride=stride)
        return
    inputs, targets = sliding_windows(series, window, horizon=horizon, stride=stride)
    M = inputs.shape[1]
    assert inputs.shape == targets.shape == (window, M, f)
    assert M == len(range(0, n - window - horizon + 1, stride))
    step = inputs[..., 0] / f  # the time index of each entry
    assert np.array_equal(targets[..., 0] / f, step + horizon)
    assert np.array_equal(step[0], stride * np.arange(M))
    assert np.array_equal(np.diff(step, axis=0), np.ones((window - 1, M)))
    assert targets.max() < n * f


def test_sliding_windows_dtypes_and_model_shapes():
    inputs, targets = sliding_windows(np.arange(12, dtype=np.float32), 5)
    assert inputs.dtype == targets.dtype == np.float32
    inputs, _ = sliding_windows(np.arange(12), 5)
    assert inputs.dtype == np.float64
    from cyrnn import RNN

    model = RNN(1, 4, 1, seed=0, backend="numpy", dtype="float64")
    loss, _, _ = model.loss_and_grad(inputs, targets.astype(np.float64))
    assert np.isfinite(loss)
    loss, _, _ = model.loss_and_grad(inputs, targets[-1], target_steps="last")
    assert np.isfinite(loss)


@pytest.mark.parametrize(
    "series, kwargs, exc, pattern",
    [
        (np.arange(10.0), dict(window=0), ValueError, "window"),
        (np.arange(10.0), dict(window=2.5), TypeError, "window"),
        (np.arange(10.0), dict(window=2, horizon=0), ValueError, "horizon"),
        (np.arange(10.0), dict(window=2, stride=0), ValueError, "stride"),
        (np.arange(10.0), dict(window=10), ValueError, r"series: 10 steps .* need at least .* = 11"),
        (np.zeros((5, 2, 2)), dict(window=2), ValueError, "series: expected shape"),
        (np.array(["a", "b", "c"]), dict(window=1), TypeError, "series"),
        (np.array([1.0, np.nan, 2.0]), dict(window=1), ValueError, "series: contains NaN"),
    ],
)
def test_sliding_windows_bad_arguments(series, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sliding_windows(series, **kwargs)


# -------------------------------------------------------------------------------------------
# train / validation split
# -------------------------------------------------------------------------------------------


def test_split_sizes_and_order():
    data = np.arange(100)
    train, val = train_val_split(data)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = train_val_split(data, 0.25)
    assert (train.size, val.size) == (75, 25)
    train, val = train_val_split(np.arange(100), 0.07)  # 0.07 * 100 is 7.000000000000001
    assert (train.size, val.size) == (93, 7)
    train, val = train_val_split(np.arange(11), 0.1)  # ceil(1.1) = 2
    assert (train.size, val.size) == (9, 2)
    assert np.array_equal(np.concatenate([train, val]), np.arange(11))


def test_split_along_the_first_axis():
    data = np.arange(60.0).reshape(20, 3)
    train, val = train_val_split(data, 0.2)
    assert train.shape == (16, 3) and val.shape == (4, 3)
    assert np.array_equal(val, data[16:])
    train, val = train_val_split([1, 2, 3, 4], 0.5)
    assert train.tolist() == [1, 2] and val.tolist() == [3, 4]


@given(n=st.integers(2, 500), fraction=st.floats(0.001, 0.999))
@PROPERTY
def test_split_property(n, fraction):
    data = np.arange(n)
    try:
        train, val = train_val_split(data, fraction)
    except ValueError as exc:
        assert "cannot give non-empty parts" in str(exc)
        return
    assert train.size >= 1 and val.size >= 1 and train.size + val.size == n
    assert np.array_equal(np.concatenate([train, val]), data)
    assert abs(val.size - fraction * n) < 1 + 1e-6


@pytest.mark.parametrize(
    "data, fraction, exc, pattern",
    [
        (np.arange(10), 0.0, ValueError, "val_fraction"),
        (np.arange(10), 1.0, ValueError, "val_fraction"),
        (np.arange(10), -0.1, ValueError, "val_fraction"),
        (np.arange(10), float("nan"), ValueError, "val_fraction"),
        (np.arange(10), "0.1", TypeError, "val_fraction"),
        (np.arange(10), True, TypeError, "val_fraction"),
        (np.arange(10), 0.99, ValueError, r"data: 10 items .* \(0 train, 10 validation\)"),
        (np.arange(1), 0.5, ValueError, "data: 1 items"),
        (np.zeros(0), 0.5, ValueError, "data: 0 items"),
        (np.float64(3.0), 0.5, ValueError, "data: expected an array"),
    ],
)
def test_split_bad_arguments(data, fraction, exc, pattern):
    with pytest.raises(exc, match=pattern):
        train_val_split(data, fraction)
