"""The Triton varlen flash-attention kernels run on the CPU under ``TRITON_INTERPRET=1``.

Run on its own: ``TRITON_INTERPRET=1 pytest tests/interpret/test_flash_varlen.py`` (the variable is
read when kernels are decorated, so one process runs either interpreted or compiled kernels;
the normal suite skips this module). float32 and float16 only: bfloat16 is wrong in the
interpreter. Each output and gradient is judged against float64: its error must be at most 2x
the error of plain torch attention in the same dtype, plus a small floor (as
tests/test_kernels_ref.py judges the PyTorch paths). GPU compiles: test_kernels_sm90_attention.py.
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch  # noqa: E402

from l2vf_support.packed import cu_seqlens, eager_probs, per_text_attention, run_qkv, small_tiles  # noqa: E402
from llm2vec_fast.kernels import flash_varlen_attention  # noqa: E402
from llm2vec_fast.kernels.flash_varlen import (  # noqa: E402
    flash_varlen_bwd,
    flash_varlen_fwd,
    flash_varlen_tiles,
)
from llm2vec_fast.kernels.varlen import Varlen  # noqa: E402

SEED = 0  # data are fixed per case (python's str hash is salted per process)

SMALL = small_tiles()  # BLOCK_M != BLOCK_N


def _per_text(q, k, v, lengths, causal, scale, f64):
    """Attention one text at a time: float64 eager (the truth) or torch SDPA in q's dtype."""

    def attend(qs, ks, vs, s, n):
        if f64:
            return eager_probs(qs, ks, scale, causal) @ vs
        return torch.nn.functional.scaled_dot_product_attention(
            qs[None], ks[None], vs[None], is_causal=causal, scale=scale
        )[0]

    return per_text_attention(q, k, v, lengths, attend)


def assert_within(name, got, ref, base, floor):
    """``|got - ref|_max <= 2 * base + floor``, explaining where and how badly when not."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    bad_values = (~torch.isfinite(got)).sum().item()
    assert bad_values == 0, f"{name}: {bad_values} NaN/inf values"
    diff = (got.double() - ref).abs()
    err = diff.max().item() if diff.numel() else 0.0
    limit = 2 * base + floor
    if err > limit:
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        n_over = int((diff > limit).sum())
        raise AssertionError(
            f"{name}: max error {err:.3g} at {where} > 2 * torch's {base:.3g} + {floor:g}; "
            f"{n_over} of {diff.numel()} elements over the limit"
        )


# Floors: float32 gradients come out a few ulps worse than torch's softmax backward (P is
# recomputed from the LSE and dS uses delta = rowsum(dO * O), as in flash-attention), up to
# ~2.5e-6 on O(1) values over 180 seeded runs; float16: one ulp at 1.0 (dS is rounded to float16
# before its dots, torch's CPU path keeps it in float32).
DTYPES = [
    pytest.param(torch.float32, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-3, id="fp16"),
]

# (lengths, (Hq, Hkv), D, causal, tiles): one row per case, each run in both dtypes
CASES = [
    ([1], (2, 2), 16, False, None),
    ([1], (2, 2), 16, True, None),
    ([7, 1, 33], (4, 1), 16, False, None),
    ([7, 1, 33], (4, 1), 16, True, None),
    ([3] * 9 + [70], (8, 1), 16, False, None),
    ([3] * 9 + [70], (8, 1), 16, True, None),
    ([0, 5, 0, 17, 0], (2, 1), 16, False, None),  # zero-length texts own no rows
    ([0, 5, 0, 17, 0], (2, 1), 16, True, None),
    ([7, 1, 33], (2, 2), 64, False, None),
    ([5, 19], (4, 1), 64, True, None),
    ([7, 1, 33], (4, 1), 80, False, None),  # BLOCK_D 128, masked head dim
    ([5, 19], (2, 2), 80, True, None),
    ([3] * 9 + [70], (4, 2), 16, False, SMALL),
    ([3] * 9 + [70], (4, 2), 16, True, SMALL),
    ([37, 1, 50], (8, 1), 24, True, SMALL),  # odd D (BLOCK_D 32)
]


def _case_id(c):
    lengths, (hq, hkv), d, causal, tiles = c
    return (
        f"n{len(lengths)}max{max(lengths)}-h{hq}:{hkv}-d{d}-{'causal' if causal else 'full'}"
        f"{'-small' if tiles else ''}"
    )


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype, floor", DTYPES)
def test_flash_varlen_matches_float64(case, dtype, floor):
    lengths, (hq, hkv), d, causal, tiles = case
    total = sum(lengths)
    g = torch.Generator().manual_seed(zlib.crc32(_case_id(case).encode()) + SEED)
    q, k, v = (torch.randn(total, h, d, generator=g) for h in (hq, hkv, hkv))
    do = torch.randn(total, hq, d, generator=g)
    q, k, v, do = (x.to(dtype) for x in (q, k, v, do))  # the values both sides see
    scale = 0.3
    cu = cu_seqlens(lengths)

    if tiles is None:
        got = run_qkv(lambda q, k, v: flash_varlen_attention(q, k, v, cu, max(lengths), causal, scale),
                   q, k, v, do)  # fmt: skip
    else:  # the launchers take tiles (the custom ops use the table's)
        t = dataclasses.replace(tiles, BLOCK_D=flash_varlen_tiles(d).BLOCK_D)
        opts = Varlen(cu, max(lengths), causal, scale)
        o, lse = flash_varlen_fwd(q, k, v, opts, t)
        got = [o, *flash_varlen_bwd(do, q, k, v, o, lse, opts, t)]
    assert got[0].dtype == dtype and got[0].shape == q.shape
    ref = run_qkv(lambda *x: _per_text(*x, lengths, causal, scale, True), *(
        x.double() for x in (q, k, v, do)))  # fmt: skip
    torch_low = run_qkv(lambda *x: _per_text(*x, lengths, causal, scale, False), q, k, v, do)
    for name, a, r, b in zip(("out", "dq", "dk", "dv"), got, ref, torch_low):
        base = (b.double() - r).abs().max().item() if r.numel() else 0.0
        assert_within(f"{name} ({dtype}, {_case_id(case)})", a, r, base, floor)


def test_lse_is_natural_log():
    lengths, hq, d = [5, 11], 2, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(16, hq, d, generator=g) for _ in range(3))
    _, lse = flash_varlen_fwd(q, k, v, Varlen(cu_seqlens(lengths), 11, softmax_scale=0.25))
    assert lse.shape == (hq, 16) and lse.dtype == torch.float32
    s = 0
    for n in lengths:
        w = torch.einsum("qhd,khd->hqk", q[s : s + n].double(), k[s : s + n].double()) * 0.25
        torch.testing.assert_close(lse[:, s : s + n].double(), w.logsumexp(-1), atol=1e-5, rtol=0)
        s += n


def test_strided_views_of_fused_qkv():
    """q/k/v as views of one fused projection (token stride != heads * D): no copies needed."""
    lengths, hq, hkv, d = [9, 4], 4, 2, 16
    total = sum(lengths)
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(total, (hq + 2 * hkv) * d, generator=g)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=1)
    q, k, v = q.view(total, hq, d), k.view(total, hkv, d), v.view(total, hkv, d)
    assert not q.is_contiguous()
    out = flash_varlen_attention(q, k, v, cu_seqlens(lengths), 9)
    ref = _per_text(q.double(), k.double(), v.double(), lengths, False, d**-0.5, True)
    assert_within("out (strided)", out, ref, 0.0, 1e-5)


def test_tiles_table():
    for d in (64, 80, 96, 128, 256):
        t = flash_varlen_tiles(d)
        assert t.BLOCK_D >= d and t.BLOCK_D & (t.BLOCK_D - 1) == 0
        assert min(t.BLOCK_M, t.BLOCK_N, t.BLOCK_M1, t.BLOCK_N1, t.BLOCK_M2, t.BLOCK_N2) >= 16
    with pytest.raises(ValueError):
        flash_varlen_tiles(512)


@pytest.mark.parametrize("lengths", [[], [0, 0]], ids=["no-texts", "empty-texts"])
def test_empty_batch(lengths):
    q = torch.randn(0, 2, 16, requires_grad=True)
    k = torch.randn(0, 1, 16, requires_grad=True)
    out = flash_varlen_attention(q, k, k, cu_seqlens(lengths), 0)
    assert out.shape == (0, 2, 16)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


def test_bad_input():
    q = torch.randn(6, 3, 16)
    k = torch.randn(6, 2, 16)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash_varlen_attention(q, k, k, cu_seqlens([6]), 6)
    with pytest.raises(ValueError, match="int32"):
        flash_varlen_attention(q, q, q, cu_seqlens([6]).long(), 6)
    with pytest.raises(ValueError, match="share one of"):
        flash_varlen_attention(q, q.half(), q, cu_seqlens([6]), 6)
