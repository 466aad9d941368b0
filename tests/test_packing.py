"""The packer: C++ extension and numpy fallback agree, and both keep the invariants."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm2vec_fast import packing
from llm2vec_fast.packing import HAVE_EXTENSION, PackedBatch, pack_token_ids

BACKENDS = [
    pytest.param(
        "cpp", marks=pytest.mark.skipif(not HAVE_EXTENSION, reason="llm2vec_fast._C not built")
    ),
    "python",
]
needs_extension = pytest.mark.skipif(not HAVE_EXTENSION, reason="llm2vec_fast._C not built")

FIELDS = ("indices", "input_ids", "cu_seqlens", "position_ids", "pool_mask")
DTYPES = {
    "indices": np.int64,
    "input_ids": np.int32,
    "cu_seqlens": np.int32,
    "position_ids": np.int32,
    "pool_mask": np.uint8,
}


# ---------------------------------------------------------------------------
# helpers


def random_case(seed: int) -> dict:
    """Odd lengths (0, 1, long), odd budgets and limits, from one seed."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([0, 1, 2, 7, 61, 257]))
    kind = rng.integers(0, 4, size=n)
    lengths = np.where(
        kind == 0,
        rng.integers(0, 2, size=n),  # 0 and 1
        np.where(kind == 1, rng.integers(2, 17, size=n), rng.integers(17, 300, size=n)),
    )
    if n:  # many equal lengths, to exercise the stable sort
        lengths[rng.random(n) < 0.3] = 5
    rows = [rng.integers(0, 50_000, size=int(length)).tolist() for length in lengths]
    pool = [int(rng.integers(0, 2 * length + 3)) for length in lengths]
    return {
        "rows": rows,
        "pool": pool,
        "max_length": int(rng.choice([0, -1, 1, 7, 64, 1000])),
        "max_tokens_per_batch": int(rng.choice([1, 5, 64, 257, 1000, 10**6])),
        "max_batch_size": int(rng.choice([0, -3, 1, 3, 16])),
    }


def pack_case(case: dict, backend: str, form: str = "list") -> list[PackedBatch]:
    rows = case["rows"]
    kwargs = {
        "max_length": case["max_length"],
        "max_tokens_per_batch": case["max_tokens_per_batch"],
        "max_batch_size": case["max_batch_size"],
        "backend": backend,
    }
    if form == "list":
        return pack_token_ids(rows, case["pool"], **kwargs)
    if form == "tuples":
        return pack_token_ids([tuple(r) for r in rows], tuple(case["pool"]), **kwargs)
    if form == "arrays":
        return pack_token_ids(
            [np.asarray(r, dtype=np.int64) for r in rows], np.asarray(case["pool"]), **kwargs
        )
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    dtype = {"flat32": np.int32, "flat64": np.int64}[form]
    flat = np.asarray([t for r in rows for t in r], dtype=dtype)
    return pack_token_ids(flat, np.asarray(case["pool"]), offsets=offsets, **kwargs)


def assert_same_batches(got: list[PackedBatch], want: list[PackedBatch]) -> None:
    """Equal batch by batch, field by field, dtype included; says where they differ."""
    assert len(got) == len(want), f"{len(got)} batches vs {len(want)}"
    for b, (g, w) in enumerate(zip(got, want)):
        for name in FIELDS:
            x, y = getattr(g, name), getattr(w, name)
            assert x.dtype == y.dtype, f"batch {b} {name}: dtype {x.dtype} vs {y.dtype}"
            assert x.shape == y.shape, f"batch {b} {name}: shape {x.shape} vs {y.shape}"
            bad = np.flatnonzero(x != y)
            assert bad.size == 0, (
                f"batch {b} {name}: {bad.size} of {x.size} differ, first at {bad[0]}: "
                f"{x[bad[0]]} vs {y[bad[0]]}"
            )
        assert g.max_seqlen == w.max_seqlen, f"batch {b} max_seqlen"
        assert isinstance(g.max_seqlen, int)


def check_invariants(batches: list[PackedBatch], case: dict) -> None:
    rows, pool = case["rows"], case["pool"]
    max_length = case["max_length"]
    budget, max_count = case["max_tokens_per_batch"], case["max_batch_size"]
    n = len(rows)
    lens = [min(len(r), max_length) if max_length > 0 else len(r) for r in rows]

    # every input position exactly once
    all_indices = np.concatenate([b.indices for b in batches]) if batches else np.zeros(0)
    assert sorted(all_indices.tolist()) == list(range(n))

    # longest first, stable for ties
    keys = [(-lens[i], i) for i in all_indices.tolist()]
    assert keys == sorted(keys), "order is not length-descending and stable"

    for b, batch in enumerate(batches):
        for name, dtype in DTYPES.items():
            assert getattr(batch, name).dtype == dtype, f"batch {b} {name} dtype"
        idx = batch.indices.tolist()
        blens = [lens[i] for i in idx]
        assert batch.n_texts == len(idx) >= 1
        assert batch.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(blens)]).tolist()
        assert batch.n_tokens == sum(blens) == batch.cu_seqlens[-1]
        assert batch.position_ids.tolist() == [p for m in blens for p in range(m)]
        assert batch.input_ids.tolist() == [t for i, m in zip(idx, blens) for t in rows[i][:m]]
        want_mask = [
            v
            for i, m in zip(idx, blens)
            for v in [0] * (m - min(pool[i], m)) + [1] * min(pool[i], m)
        ]
        assert batch.pool_mask.tolist() == want_mask
        for i, m, start in zip(idx, blens, batch.cu_seqlens[:-1].tolist()):
            assert batch.pool_mask[start : start + m].sum() == min(pool[i], m)
        assert batch.max_seqlen == max(blens)
        # limits, and greedy: the next text did not fit
        assert batch.n_tokens <= budget or batch.n_texts == 1
        if max_count > 0:
            assert batch.n_texts <= max_count
        if b + 1 < len(batches):
            nxt = lens[int(batches[b + 1].indices[0])]
            full = max_count > 0 and batch.n_texts == max_count
            assert batch.n_tokens + nxt > budget or full, f"batch {b} closed early"


# ---------------------------------------------------------------------------
# the extension


@needs_extension
def test_extension_imports():
    import llm2vec_fast._C as ext

    assert callable(ext.pack)


# ---------------------------------------------------------------------------
# C++ == Python, and the invariants, on random inputs


@needs_extension
@pytest.mark.parametrize("seed", range(40))
def test_cpp_matches_python(seed):
    case = random_case(seed)
    want = pack_case(case, "python")
    check_invariants(want, case)
    for form in ("list", "tuples", "arrays", "flat32", "flat64"):
        assert_same_batches(pack_case(case, "cpp", form), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(40, 60))
def test_invariants(backend, seed):
    case = random_case(seed)
    batches = pack_case(case, backend)
    check_invariants(batches, case)
    assert_same_batches(pack_case(case, backend, "flat32"), batches)


@needs_extension
@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), max_size=30),
    pool_extra=st.integers(0, 5),
    max_length=st.integers(-2, 45),
    budget=st.integers(1, 120),
    max_count=st.integers(-1, 6),
)
def test_cpp_matches_python_property(lengths, pool_extra, max_length, budget, max_count):
    case = {
        "rows": [list(range(7 * i, 7 * i + m)) for i, m in enumerate(lengths)],
        "pool": [(m * (i % 3)) // 2 + pool_extra for i, m in enumerate(lengths)],
        "max_length": max_length,
        "max_tokens_per_batch": budget,
        "max_batch_size": max_count,
    }
    want = pack_case(case, "python")
    check_invariants(want, case)
    assert_same_batches(pack_case(case, "cpp"), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_very_long_texts(backend):
    """Lengths far above the text count take the comparison sort in C++."""
    lengths = [70_000, 3, 3, 0, 70_000, 5, 1, 69_999]
    case = {
        "rows": [list(range(m)) for m in lengths],
        "pool": [m // 3 for m in lengths],
        "max_length": 0,
        "max_tokens_per_batch": 4096,
        "max_batch_size": 0,
    }
    batches = pack_case(case, backend)
    check_invariants(batches, case)
    assert [b.indices.tolist() for b in batches] == [[0], [4], [7], [5, 1, 2, 6, 3]]
    if backend == "cpp":
        assert_same_batches(batches, pack_case(case, "python"))


# ---------------------------------------------------------------------------
# worked examples


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example(backend):
    rows = [[1, 2, 3], [4], [], [5, 6, 7, 8]]
    batches = pack_token_ids(
        rows, [1, 5, 0, 2], max_length=3, max_tokens_per_batch=4, backend=backend
    )
    assert len(batches) == 2
    a, b = batches
    assert a.indices.tolist() == [0]  # ties (0 and 3 both 3 long) keep input order
    assert a.input_ids.tolist() == [1, 2, 3]
    assert a.pool_mask.tolist() == [0, 0, 1]
    assert b.indices.tolist() == [3, 1, 2]
    assert b.input_ids.tolist() == [5, 6, 7, 4]  # text 3 truncated to 3
    assert b.cu_seqlens.tolist() == [0, 3, 4, 4]  # the empty text costs nothing
    assert b.position_ids.tolist() == [0, 1, 2, 0]
    assert b.pool_mask.tolist() == [0, 1, 1, 1]  # min(2, 3) and min(5, 1)
    assert (a.max_seqlen, b.max_seqlen) == (3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_longer_than_budget_goes_alone(backend):
    rows = [[1] * 3, [2] * 10, [3] * 2, [4] * 4]
    batches = pack_token_ids(rows, [1] * 4, max_length=0, max_tokens_per_batch=6, backend=backend)
    # sorted: 1 (10 tokens), 3 (4), 0 (3), 2 (2)
    assert [b.indices.tolist() for b in batches] == [[1], [3], [0, 2]]
    assert [b.n_tokens for b in batches] == [10, 4, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_count_limit(backend):
    rows = [[7]] * 7
    batches = pack_token_ids(
        rows, [1] * 7, max_length=0, max_tokens_per_batch=100, max_batch_size=3, backend=backend
    )
    assert [b.indices.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_texts(backend):
    assert pack_token_ids([], [], max_length=8, max_tokens_per_batch=8, backend=backend) == []
    flat = np.zeros(0, dtype=np.int32)
    assert (
        pack_token_ids(flat, [], offsets=[0], max_length=8, max_tokens_per_batch=8, backend=backend)
        == []
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_texts_empty(backend):
    batches = pack_token_ids(
        [[], [], []], [0, 3, 1], max_length=0, max_tokens_per_batch=1, backend=backend
    )
    assert len(batches) == 1
    (b,) = batches
    assert b.indices.tolist() == [0, 1, 2]
    assert b.cu_seqlens.tolist() == [0, 0, 0, 0]
    assert b.n_tokens == 0 and b.max_seqlen == 0
    assert b.input_ids.dtype == np.int32 and b.pool_mask.dtype == np.uint8


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_integer_ids_and_bools(backend):
    rows = [[np.int64(3), np.int32(4)], [True, 2]]
    (b,) = pack_token_ids(rows, [2, 2], max_length=0, max_tokens_per_batch=10, backend=backend)
    assert b.input_ids.tolist() == [3, 4, 1, 2]


def test_to_torch():
    torch = pytest.importorskip("torch")
    (b,) = pack_token_ids([[5, 6], [7]], [1, 1], max_length=0, max_tokens_per_batch=10)
    t = b.to_torch("cpu")
    assert t["input_ids"].dtype == torch.int64 and t["input_ids"].tolist() == [5, 6, 7]
    assert t["cu_seqlens"].dtype == torch.int32 and t["cu_seqlens"].tolist() == [0, 2, 3]
    assert t["position_ids"].dtype == torch.int32 and t["position_ids"].tolist() == [0, 1, 0]
    assert t["pool_mask"].dtype == torch.bool and t["pool_mask"].tolist() == [False, True, True]
    assert t["indices"].dtype == torch.int64 and t["indices"].tolist() == [0, 1]
    assert t["max_seqlen"] == 2 and isinstance(t["max_seqlen"], int)


@needs_extension
def test_threads_agree():
    """The GIL is released while packing; concurrent calls still agree."""
    case = random_case(7) | {"max_tokens_per_batch": 200}
    want = pack_case(case, "cpp", "flat32")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: pack_case(case, "cpp", "flat32"), range(8)))
    for got in results:
        assert_same_batches(got, want)


def test_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(packing, "_C", None)
    monkeypatch.setattr(packing, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="_C not built; using the slow Python packer"):
        first = pack_token_ids([[1, 2]], [1], max_length=0, max_tokens_per_batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = pack_token_ids([[1, 2]], [1], max_length=0, max_tokens_per_batch=4)
    assert_same_batches(first, second)
    with pytest.raises(ImportError, match="not built"):
        pack_token_ids([[1]], [1], max_length=0, max_tokens_per_batch=4, backend="cpp")


# ---------------------------------------------------------------------------
# bad input


def _pack(backend, rows=([1, 2], [3]), pool=(1, 1), **kw):
    kw = {"max_length": 0, "max_tokens_per_batch": 8, "backend": backend} | kw
    return pack_token_ids([list(r) for r in rows], list(pool), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": ([1, -2], [3])}, r"token_ids\[0\]\[1\] = -2 is negative"),
        ({"rows": ([1], [2**31])}, r"token_ids\[1\]\[0\] = 2147483648 is too large"),
        ({"rows": ([1], [2**70])}, r"token_ids\[1\]\[0\] = .* out of range"),
        ({"pool": (1,)}, "pool_lengths has 1 entries but there are 2 texts"),
        ({"pool": (1, 1, 1)}, "pool_lengths has 3 entries but there are 2 texts"),
        ({"pool": (1, -1)}, r"pool_lengths\[1\] = -1 is negative"),
        ({"max_tokens_per_batch": 0}, "max_tokens_per_batch must be > 0"),
        ({"max_tokens_per_batch": -5}, "max_tokens_per_batch must be > 0"),
        ({"max_tokens_per_batch": 2**31}, "must fit in int32"),
        ({"pool": [[1], [1]]}, "pool_lengths must be 1-D"),
    ],
)
def test_bad_values(backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _pack(backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("token_ids", "pool", "match"),
    [
        ("abc", [1], "got a string"),
        (["abc"], [1], r"token_ids\[0\] is a string"),
        ([[1, 2.5]], [1], r"token_ids\[0\]\[1\] must be an int"),
        ([[1], 3], [1, 1], r"token_ids\[1\] must be a sequence of ints"),
        (5, [1], "token_ids must be a sequence"),
        ([[1]], [1.5], "pool_lengths must hold integers"),
        ([[1]], ["a"], "pool_lengths must hold integers"),
    ],
)
def test_bad_types(backend, token_ids, pool, match):
    with pytest.raises(TypeError, match=match):
        pack_token_ids(token_ids, pool, max_length=0, max_tokens_per_batch=8, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("flat", "offsets", "error", "match"),
    [
        (np.array([1, -1], np.int32), [0, 1, 2], ValueError, r"token_ids\[1\] = -1 is negative"),
        (np.array([1, -1], np.int64), [0, 1, 2], ValueError, r"token_ids\[1\] = -1 is negative"),
        (np.array([1, 2**40], np.int64), [0, 1, 2], ValueError, "is too large"),
        (np.array([1, 2], np.int32), [1, 1, 2], ValueError, r"offsets\[0\] must be 0"),
        (np.array([1, 2], np.int32), [0, 2, 1], ValueError, "non-decreasing"),
        (np.array([1, 2], np.int32), [0, 1, 1], ValueError, r"offsets\[-1\] must equal"),
        (np.array([1, 2], np.int32), [], ValueError, "offsets must have"),
        (np.array([[1, 2]], np.int32), [0, 1, 2], ValueError, "flat 1-D"),
        (np.array([1.0, 2.0]), [0, 1, 2], TypeError, "token_ids must hold integers"),
        (np.array([1, 2], np.int32), [0.0, 1.0, 2.0], TypeError, "offsets must hold integers"),
    ],
)
def test_bad_flat_input(backend, flat, offsets, error, match):
    with pytest.raises(error, match=match):
        pack_token_ids(
            flat, [1, 1], offsets=offsets, max_length=0, max_tokens_per_batch=8, backend=backend
        )


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        _pack("rust")
