"""Dropout in the Triton varlen flash-attention kernels, run on the CPU under ``TRITON_INTERPRET=1``.

Run on its own: ``TRITON_INTERPRET=1 python -m pytest -q tests/interpret/test_flash_dropout.py``
(the variable is read when kernels are decorated; the normal suite skips this module). float32
and float16 only: bfloat16 is wrong in the interpreter (bf16 at real shapes:
tests/test_kernels_gpu_attention_dropout.py; sm_90 compiles: test_kernels_sm90_attention_dropout.py).

The kernels never store the mask; :func:`flash_varlen_dropout_mask` materialises the one they
regenerate from (seed, offset). With it, the kernel's output and q/k/v gradients are judged
against float64 ``(softmax(S) * keep / (1 - p)) @ V``: the error may be at most 2x the error of
the same eager computation in the input's dtype, plus a small floor
(:func:`l2vf_support.numerics.assert_close_2x`). Then the mask itself: its keep fraction, its
independence across heads, texts, rows, keys and offsets, and its reproducibility.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np  # noqa: E402
import pytest
import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402

from l2vf_support.numerics import assert_close_2x  # noqa: E402
from l2vf_support.packed import cu_seqlens, eager_probs, per_text_attention, run_qkv, small_tiles  # noqa: E402
from llm2vec_fast import kernels  # noqa: E402
from llm2vec_fast.kernels import flash_varlen_attention, ops  # noqa: E402
from llm2vec_fast.kernels.dropout_seeds import philox_key  # noqa: E402
from llm2vec_fast.kernels.flash_varlen import (  # noqa: E402
    flash_varlen_bwd,
    flash_varlen_dropout_mask,
    flash_varlen_fwd,
    flash_varlen_tiles,
)
from llm2vec_fast.kernels.varlen import Varlen  # noqa: E402

# small tiles with BLOCK_M != BLOCK_N (fwd 32 x 16, dK/dV 16 x 32, dQ 32 x 16): several blocks
# per text, and a tiling unlike the mask helper's 32 x 32, so a mask that depended on the tiling
# would not match
SMALL = small_tiles()


def _masked_attention(q, k, v, lengths, causal, scale, keep, p):
    """Eager ``(softmax(q k^T * scale) * keep / (1 - p)) @ v`` per text, in q's dtype.

    keep: ``[Hq, T, max_seqlen]`` bool, the kernel's mask (key index counted inside the text).
    """

    def attend(qs, ks, vs, s, n):
        probs = eager_probs(qs, ks, scale, causal)
        if p > 0:
            probs = probs * keep[:, s : s + n, :n].to(probs.dtype) / (1 - p)
        return probs @ vs

    return per_text_attention(q, k, v, lengths, attend)


def _inputs(lengths, hq, hkv, d, dtype, seed):
    total = sum(lengths)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(total, h, d, generator=g) for h in (hq, hkv, hkv))
    do = torch.randn(total, hq, d, generator=g)
    return [x.to(dtype) for x in (q, k, v, do)]  # the values every side sees


# ---- (a) output and gradients against float64 with the kernel's mask -----------------------

# Floors as tests/interpret/test_flash_varlen.py's (float32: a few ulps on O(1) values; float16:
# one ulp at 1.0), the real tolerance being 2x the eager error in the same dtype.
DTYPES = [
    pytest.param(torch.float32, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-3, id="fp16"),
]

# (lengths, (Hq, Hkv), D, causal, tiles, dropout_p)
CASES = [
    ([1], (2, 2), 16, False, None, 0.3),
    ([7, 1, 97], (2, 2), 16, False, None, 0.3),
    ([7, 1, 97], (2, 2), 16, True, None, 0.3),
    ([7, 1, 97], (4, 1), 16, False, None, 0.3),
    ([7, 1, 97], (4, 1), 16, True, None, 0.3),
    ([0, 5, 0, 33, 1], (4, 1), 24, True, None, 0.5),  # empty texts, odd D (BLOCK_D 32)
    ([61, 7, 1], (2, 1), 16, False, SMALL, 0.3),
    ([61, 7, 1], (2, 1), 16, True, SMALL, 0.1),
    ([3, 3, 40], (2, 1), 80, False, None, 0.3),  # BLOCK_D 128, masked head dim
]


def _case_id(c):
    lengths, (hq, hkv), d, causal, tiles, p = c
    return (
        f"n{len(lengths)}max{max(lengths)}-h{hq}:{hkv}-d{d}-{'causal' if causal else 'full'}"
        f"-p{p}{'-small' if tiles else ''}"
    )


def _flash(lengths, causal, scale, tiles, d, p, seed, offset=0):
    """(out, dq, dk, dv) of the flash kernels for (q, k, v, do)."""
    cu = cu_seqlens(lengths)
    if tiles is None:
        return lambda q, k, v, do: run_qkv(
            lambda q, k, v: flash_varlen_attention(
                q, k, v, cu, max(lengths), causal, scale, p, seed, offset
            ), q, k, v, do,
        )  # fmt: skip

    def launch(q, k, v, do):  # the launchers take tiles (the custom ops use the table's)
        t = dataclasses.replace(tiles, BLOCK_D=flash_varlen_tiles(d).BLOCK_D)
        opts = Varlen(cu, max(lengths), causal, scale, p, seed, offset)
        o, lse = flash_varlen_fwd(q, k, v, opts, t)
        return [o, *flash_varlen_bwd(do, q, k, v, o, lse, opts, t)]

    return launch


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype, floor", DTYPES)
def test_dropout_matches_float64_with_the_kernels_mask(case, dtype, floor):
    lengths, (hq, hkv), d, causal, tiles, p = case
    seed = zlib.crc32(_case_id(case).encode())
    q, k, v, do = _inputs(lengths, hq, hkv, d, dtype, seed)
    scale = 0.3
    keep = flash_varlen_dropout_mask(cu_seqlens(lengths), max(lengths), hq, p, seed=seed, offset=7)

    got = _flash(lengths, causal, scale, tiles, d, p, seed, offset=7)(q, k, v, do)
    assert got[0].dtype == dtype and got[0].shape == q.shape

    def eager(q, k, v):
        return _masked_attention(q, k, v, lengths, causal, scale, keep, p)

    ref64 = run_qkv(eager, *(x.double() for x in (q, k, v, do)))
    ref_low = run_qkv(eager, q, k, v, do)
    for name, a, r, r64 in zip(("out", "dq", "dk", "dv"), got, ref_low, ref64):
        assert torch.isfinite(a).all(), f"{name}: NaN/inf"
        assert_close_2x(a, r, r64, atol=floor, rtol=0, what=f"{name} {_case_id(case)}")


def test_the_mask_is_what_the_kernel_applies():
    """A sharper check of the same fact: with V = identity rows, the output row is the dropped,
    rescaled probability row itself, so out / (P / (1 - p)) is the kernel's mask exactly."""
    lengths, hq, p, seed = [37, 1, 20], 2, 0.4, 99
    total, d = sum(lengths), 64
    assert max(lengths) <= d
    g = torch.Generator().manual_seed(0)
    q = torch.randn(total, hq, d, generator=g)
    k = torch.randn(total, 1, d, generator=g)
    v = torch.zeros(total, 1, d)
    s = 0
    for n in lengths:  # v[s + j] = e_j: out[t, h, j] = P_dropped[t, j]
        v[s : s + n, 0, :n] = torch.eye(n)
        s += n
    cu = cu_seqlens(lengths)
    out = flash_varlen_attention(q, k, v, cu, max(lengths), dropout_p=p, seed=seed)
    undropped = flash_varlen_attention(q, k, v, cu, max(lengths))
    keep = flash_varlen_dropout_mask(cu, max(lengths), hq, p, seed)
    got = out.transpose(0, 1)[:, :, : max(lengths)]
    want = undropped.transpose(0, 1)[:, :, : max(lengths)] * keep / (1 - p)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert ((got != 0) == keep).all()


# ---- (b) the mask: its definition, keep fraction and independence ------------------------


def _philox4x32(key: int, c0, c1, c2, c3, rounds: int):
    """Philox-4x32 (Salmon et al., SC'11) in numpy uint64: the four output words."""
    m32 = np.uint64(0xFFFFFFFF)
    k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)
    c = [np.asarray(x, dtype=np.uint64) & m32 for x in (c0, c1, c2, c3)]
    for _ in range(rounds):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ k0,
            p1 & m32,
            (p0 >> np.uint64(32)) ^ c[3] ^ k1,
            p0 & m32,
        ]
        k0 = (k0 + np.uint64(0x9E3779B9)) & m32
        k1 = (k1 + np.uint64(0xBB67AE85)) & m32
    return c


def test_mask_is_the_documented_philox_stream():
    """keep[h, t, j] = (16-bit half j % 2 of word (j % 8) // 2 of Philox-4x32-7 keyed by the
    hashed seed at counter (j // 8, t, h, offset)) >= ceil(p * 2**16), computed here in numpy."""
    lengths, hq, p, seed, offset = [21, 9], 2, 0.3, 5, 3
    keep = flash_varlen_dropout_mask(cu_seqlens(lengths), max(lengths), hq, p, seed, offset)
    h, t, j = np.meshgrid(np.arange(hq), np.arange(sum(lengths)), np.arange(max(lengths)),
                          indexing="ij")  # fmt: skip
    words = _philox4x32(philox_key(seed), j // 8, t, h, np.full_like(j, offset), rounds=7)
    w = (j % 8) // 2
    word = np.choose(w, words)
    half = (word >> (16 * (j % 2)).astype(np.uint64)) & np.uint64(0xFFFF)
    want = torch.from_numpy(half >= math.ceil(p * 65536)) & _valid(lengths, hq)
    assert torch.equal(keep, want)


def _valid(lengths, hq):
    """[Hq, T, max_seqlen] bool: the (row, key) pairs inside each text."""
    mx, s = max(lengths), 0
    valid = torch.zeros(hq, sum(lengths), mx, dtype=torch.bool)
    for n in lengths:
        valid[:, s : s + n, :n] = True
        s += n
    return valid


def _agreement_bound(p, n):
    """|fraction - expected| allowed for n Bernoulli draws: 5 standard deviations."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(p):
    lengths, hq = [97, 130, 33, 1], 2
    keep = flash_varlen_dropout_mask(cu_seqlens(lengths), max(lengths), hq, p, seed=1234)
    valid = _valid(lengths, hq)
    assert not keep[~valid].any(), "entries past a text's length must be False"
    n = int(valid.sum())
    frac = keep[valid].double().mean().item()
    assert abs(frac - (1 - p)) <= _agreement_bound(p, n), (frac, 1 - p, n)
    # per head and per text too (each well over 1000 draws)
    s = 0
    for length in lengths[:3]:
        for h in range(hq):
            block = keep[h, s : s + length, :length].double()
            assert abs(block.mean().item() - (1 - p)) <= _agreement_bound(p, block.numel())
        s += length


def test_masks_differ_across_heads_texts_rows_keys_and_offsets():
    """Two independent masks agree on a fraction p^2 + (1-p)^2 of entries; the same mask on 1."""
    p, hq = 0.3, 3
    lengths = [96, 96]
    cu, mx = cu_seqlens(lengths), max(lengths)
    keep = flash_varlen_dropout_mask(cu, mx, hq, p, seed=77)
    expect = p * p + (1 - p) * (1 - p)
    a = keep[:, :96, :]  # text 0
    b = keep[:, 96:, :]  # text 1, same local coordinates
    pairs = {
        "heads 0/1": (keep[0], keep[1]),
        "heads 1/2": (keep[1], keep[2]),
        "texts": (a, b),
        "rows i/i+1": (a[:, :-1], a[:, 1:]),
        "keys j/j+1": (a[:, :, :-1], a[:, :, 1:]),  # words of one Philox call
        "keys j/j+4": (a[:, :, :-4], a[:, :, 4:]),  # the next call
    }
    upper = torch.ones(96, 96, dtype=torch.bool).triu(1)  # (i, j) against (j, i), i < j
    pairs["query/key swapped"] = (a[:, upper], a.transpose(1, 2)[:, upper])
    other_offset = flash_varlen_dropout_mask(cu, mx, hq, p, seed=77, offset=1)
    other_seed = flash_varlen_dropout_mask(cu, mx, hq, p, seed=78)
    pairs["offsets 0/1"] = (keep, other_offset)
    pairs["seeds 77/78"] = (keep, other_seed)
    for name, (x, y) in pairs.items():
        agree = (x == y).double()
        bound = _agreement_bound(expect, agree.numel())
        assert abs(agree.mean().item() - expect) <= bound, (name, agree.mean().item(), expect)
    again = flash_varlen_dropout_mask(cu, mx, hq, p, seed=77)
    assert torch.equal(keep, again)


def test_large_offsets_and_seeds():
    """Offsets use all 32 bits (2**31 and 2**32 - 1 give their own masks); seeds are any ints
    (taken modulo 2**64)."""
    cu, mx, hq, p = cu_seqlens([64]), 64, 2, 0.5
    masks = [
        flash_varlen_dropout_mask(cu, mx, hq, p, seed=s, offset=o)
        for s, o in [(0, 0), (0, 1 << 31), (0, (1 << 32) - 1), (-1, 0), (1 << 40, 0)]
    ]
    for i in range(len(masks)):
        for j in range(i):
            assert not torch.equal(masks[i], masks[j]), (i, j)
    with pytest.raises(ValueError, match="offset"):
        flash_varlen_dropout_mask(cu, mx, hq, p, seed=0, offset=1 << 32)
    with pytest.raises(ValueError, match="offset"):
        flash_varlen_dropout_mask(cu, mx, hq, p, seed=0, offset=-1)
    same = flash_varlen_dropout_mask(cu, mx, hq, p, seed=(1 << 64) - 1)
    assert torch.equal(same, masks[3])


# ---- (c) seeds: same seed, same result; the drawn seed follows torch's RNG ---------------


def _small_case(dtype=torch.float32):
    lengths = [7, 1, 24]
    q, k, v, do = _inputs(lengths, 4, 2, 16, dtype, 5)
    return lengths, cu_seqlens(lengths), q, k, v, do


def test_same_seed_same_output_other_seed_other_output():
    lengths, cu, q, k, v, do = _small_case()
    mx = max(lengths)

    def run(seed, offset=0):
        return run_qkv(
            lambda q, k, v: flash_varlen_attention(q, k, v, cu, mx, False, None, 0.3, seed, offset),
            q, k, v, do,
        )  # fmt: skip

    a, b = run(11), run(11)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for other in (run(12), run(11, offset=1)):
        for name, x, y in zip(("out", "dq", "dk", "dv"), a, other):
            assert not torch.equal(x, y), name


def test_drawn_seed_follows_torch_manual_seed():
    lengths, cu, q, k, v, _ = _small_case()
    mx = max(lengths)
    torch.manual_seed(0)
    a1 = flash_varlen_attention(q, k, v, cu, mx, dropout_p=0.3)
    a2 = flash_varlen_attention(q, k, v, cu, mx, dropout_p=0.3)  # a fresh seed per call
    torch.manual_seed(0)
    b1 = flash_varlen_attention(q, k, v, cu, mx, dropout_p=0.3)
    assert torch.equal(a1, b1)
    assert not torch.equal(a1, a2)


def test_gradient_checkpointing_replays_the_mask():
    """torch.utils.checkpoint restores the RNG state before recomputing, so the recomputed
    forward draws the same seed: the gradients equal those of a run without checkpointing."""
    lengths, cu, q, k, v, do = _small_case()
    mx = max(lengths)
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))

    def layer(q, k, v):
        return flash_varlen_attention(q @ w, k, v, cu, mx, dropout_p=0.3) @ w

    torch.manual_seed(1)
    plain = run_qkv(layer, q, k, v, do)
    torch.manual_seed(1)
    ckpt = run_qkv(
        lambda q, k, v: torch.utils.checkpoint.checkpoint(layer, q, k, v, use_reentrant=False),
        q, k, v, do,
    )  # fmt: skip
    for name, x, y in zip(("out", "dq", "dk", "dv"), plain, ckpt):
        assert torch.equal(x, y), name


# ---- (d) dropout_p = 0 is the path without dropout ----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_p_zero_is_the_no_dropout_path(dtype, causal):
    lengths, cu, q, k, v, do = _small_case(dtype)
    mx = max(lengths)
    plain = run_qkv(lambda q, k, v: flash_varlen_attention(q, k, v, cu, mx, causal), q, k, v, do)
    zero = run_qkv(
        lambda q, k, v: flash_varlen_attention(q, k, v, cu, mx, causal, None, 0.0, 123, 5),
        q, k, v, do,
    )  # fmt: skip
    for name, x, y in zip(("out", "dq", "dk", "dv"), plain, zero):
        assert torch.equal(x, y), name
    keep = flash_varlen_dropout_mask(cu, mx, 4, 0.0, seed=1)
    assert torch.equal(keep, _valid(lengths, 4))


# ---- dispatcher and custom op -------------------------------------------------------------


def _assert_as_the_flash_kernel(attention, case):
    """``attention(q, k, v, cu, mx, dropout_p=0.3, seed=9)`` gives the flash kernel's output and
    gradients, bit for bit."""
    lengths, cu, q, k, v, do = case
    mx = max(lengths)
    got = run_qkv(lambda q, k, v: attention(q, k, v, cu, mx, dropout_p=0.3, seed=9), q, k, v, do)
    want = run_qkv(lambda q, k, v: flash_varlen_attention(q, k, v, cu, mx, dropout_p=0.3, seed=9),
                   q, k, v, do)  # fmt: skip
    for name, x, y in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.equal(x, y), name


def test_dispatcher_routes_dropout_to_the_flash_kernel():
    _assert_as_the_flash_kernel(kernels.varlen_attention, _small_case())


def test_custom_op_carries_dropout():
    """``ops.varlen_attention`` with a seed: the flash kernel's output and gradients (its
    backward regenerates the forward's mask); without one it draws a seed per call."""
    case = _small_case()
    _assert_as_the_flash_kernel(ops.varlen_attention, case)
    lengths, cu, q, k, v, _ = case
    mx = max(lengths)
    torch.manual_seed(4)
    a = ops.varlen_attention(q, k, v, cu, mx, dropout_p=0.3)
    b = ops.varlen_attention(q, k, v, cu, mx, dropout_p=0.3)
    torch.manual_seed(4)
    assert torch.equal(a, ops.varlen_attention(q, k, v, cu, mx, dropout_p=0.3))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        torch.ops.llm2vec_fast.varlen_attention_forward(
            q, k, v, cu, mx, False, None, 0.3, None, 0, False
        )


def test_bad_dropout_arguments():
    lengths, cu, q, k, v, _ = _small_case()
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="dropout_p"):
            flash_varlen_attention(q, k, v, cu, max(lengths), dropout_p=p)
