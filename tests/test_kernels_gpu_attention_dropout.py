"""Dropout in the varlen flash-attention kernels on a CUDA GPU: bfloat16 at realistic shapes.

Every test is marked ``gpu`` and skipped without CUDA (and under ``TRITON_INTERPRET=1``). The
kernels never store the dropout mask; :func:`flash_varlen_dropout_mask` materialises the one they
regenerate from (seed, offset), and with it the kernel's output and q/k/v gradients are judged
by flash-attention's rule for its dropout tests (:func:`l2vf_support.numerics.assert_close_2x`):
the error against float64 ``(softmax(S) * keep / (1 - p)) @ V`` may be at most 2x the error of
the same eager computation in bfloat16, plus a small floor. Then, on the device's own generator:
seeds drawn under ``torch.manual_seed`` reproduce, gradient checkpointing replays the mask, and
the dispatcher and the custom op run the kernel with dropout.

Run on the GPU machine: ``python -m pytest tests/test_kernels_gpu_attention_dropout.py -m gpu -q``.
"""

from __future__ import annotations

import math

import pytest
import torch

from l2vf_support.gpu import COMPILED_ON_GPU

pytestmark = COMPILED_ON_GPU

pytest.importorskip("triton")

import torch.utils.checkpoint  # noqa: E402

from l2vf_support import packed  # noqa: E402
from l2vf_support.gpu import DEVICE, attention_case, cu_seqlens  # noqa: E402
from l2vf_support.numerics import assert_close_2x  # noqa: E402
from llm2vec_fast import kernels  # noqa: E402
from llm2vec_fast.kernels import flash_varlen_attention, ops  # noqa: E402
from llm2vec_fast.kernels.flash_varlen import flash_varlen_dropout_mask  # noqa: E402

P = 0.3  # SimCSE's attention dropout
# dtype with its floor (atol), as tests/test_kernels_gpu.py
LOW = [pytest.param(torch.bfloat16, 1e-3, id="bf16"), pytest.param(torch.float16, 2e-4, id="fp16")]


def mixed_lengths(seed: int = 0) -> list[int]:
    """32 short texts, 2 of 512 and the odd lengths of :func:`l2vf_support.packed.mixed_lengths`
    (a SimCSE batch packs 128 texts of at most 128 tokens; encode batches mix lengths)."""
    return packed.mixed_lengths(seed, short=32, long=2)


def _masked_attention(q, k, v, cu_seqlens, causal, keep, p):
    """Eager ``(softmax(q k^T / sqrt(D)) * keep / (1 - p)) @ v`` per text, in q's dtype."""
    scale = q.shape[-1] ** -0.5
    groups = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    out = torch.zeros_like(q)
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        n = e - s
        qs = q[s:e].transpose(0, 1)
        ks = k[s:e].transpose(0, 1).repeat_interleave(groups, 0)
        vs = v[s:e].transpose(0, 1).repeat_interleave(groups, 0)
        w = qs @ ks.transpose(1, 2) * scale
        if causal:
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            w = w.masked_fill(mask, -math.inf)
        probs = w.softmax(-1) * keep[:, s:e, :n].to(q.dtype) / (1 - p)
        out[s:e] = (probs @ vs).transpose(0, 1)
    return out


def _fwd_bwd(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dout)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    "hq, hkv, d",
    [
        pytest.param(8, 8, 64, id="mha8-d64"),
        pytest.param(9, 3, 64, id="smollm2-d64"),
        pytest.param(16, 4, 128, id="gqa4to1-d128"),
        pytest.param(32, 4, 128, id="gqa8to1-d128"),
        pytest.param(8, 2, 80, id="gqa4to1-d80"),
        pytest.param(4, 1, 256, id="gqa4to1-d256"),
    ],
)
@pytest.mark.parametrize("dtype, atol", LOW)
def test_dropout_matches_float64_with_the_kernels_mask(dtype, atol, hq, hkv, d, causal):
    lengths = mixed_lengths(seed=d + hq)
    q, k, v, do, cu, mx = attention_case(dtype, hq, hkv, d, lengths, seed=d * 7 + hq)
    seed, offset = 1000 + d + hq, 3
    keep = flash_varlen_dropout_mask(cu, mx, hq, P, seed, offset)
    out, grads = _fwd_bwd(
        lambda q, k, v: flash_varlen_attention(q, k, v, cu, mx, causal, None, P, seed, offset),
        (q, k, v), do,
    )  # fmt: skip
    ref, ref_grads = _fwd_bwd(
        lambda q, k, v: _masked_attention(q, k, v, cu, causal, keep, P), (q, k, v), do
    )
    ref64, ref64_grads = _fwd_bwd(
        lambda q, k, v: _masked_attention(q, k, v, cu, causal, keep, P),
        tuple(t.double() for t in (q, k, v)), do.double(),
    )  # fmt: skip
    tag = f"D={d} Hq={hq} Hkv={hkv} causal={causal} p={P}"
    assert_close_2x(out, ref, ref64, atol=atol, rtol=0, what=f"out {tag}")
    for name, g, r, r64 in zip(("dq", "dk", "dv"), grads, ref_grads, ref64_grads):
        assert torch.isfinite(g).all(), f"{name} {tag}: NaN/inf"
        assert_close_2x(g, r, r64, atol=atol, rtol=0, what=f"{name} {tag}")


def test_keep_fraction_at_scale():
    """About 1 - p of some 7 * 10^7 draws kept, per head too; heads, texts and offsets differ."""
    lengths = [512] * 8 + mixed_lengths(seed=1)
    cu, mx, hq = cu_seqlens(lengths), max(lengths), 32
    valid = torch.zeros(hq, sum(lengths), mx, dtype=torch.bool, device=DEVICE)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        valid[:, s:e, : e - s] = True
    keep = flash_varlen_dropout_mask(cu, mx, hq, P, seed=42)
    assert not keep[~valid].any()
    n = int(valid.sum())
    bound = 5 * math.sqrt(P * (1 - P) / n)
    assert abs(keep[valid].double().mean().item() - (1 - P)) <= bound
    per_head = keep.double().sum((1, 2)) / valid[0].sum()
    assert ((per_head - (1 - P)).abs() <= 5 * math.sqrt(P * (1 - P) / int(valid[0].sum()))).all()
    agree = P * P + (1 - P) ** 2
    other = flash_varlen_dropout_mask(cu, mx, hq, P, seed=42, offset=1)
    pairs = [
        (keep[0][valid[0]], keep[1][valid[1]]),  # heads
        (keep[:, :512, :512], keep[:, 512:1024, :512]),  # the first two texts (512 tokens each)
        (keep[valid], other[valid]),  # offsets
    ]
    for x, y in pairs:
        frac = (x == y).double().mean().item()
        assert abs(frac - agree) <= 5 * math.sqrt(agree * (1 - agree) / x.numel())


def test_seeds_on_the_device_generator():
    """Same seed, same bits; a drawn seed follows torch.manual_seed (the CUDA generator's
    offset is consumed, so the next call draws another); p = 0 is the kernel without dropout."""
    q, k, v, _, cu, mx = attention_case(torch.bfloat16, 16, 4, 128, mixed_lengths(seed=2), 2)
    a = flash_varlen_attention(q, k, v, cu, mx, dropout_p=P, seed=5)
    assert torch.equal(a, flash_varlen_attention(q, k, v, cu, mx, dropout_p=P, seed=5))
    assert not torch.equal(a, flash_varlen_attention(q, k, v, cu, mx, dropout_p=P, seed=6))
    torch.manual_seed(0)
    d1 = flash_varlen_attention(q, k, v, cu, mx, dropout_p=P)
    d2 = flash_varlen_attention(q, k, v, cu, mx, dropout_p=P)
    torch.manual_seed(0)
    assert torch.equal(d1, flash_varlen_attention(q, k, v, cu, mx, dropout_p=P))
    assert not torch.equal(d1, d2)
    plain = flash_varlen_attention(q, k, v, cu, mx)
    assert torch.equal(plain, flash_varlen_attention(q, k, v, cu, mx, dropout_p=0.0, seed=5))


def test_gradient_checkpointing_replays_the_mask():
    q, k, v, do, cu, mx = attention_case(torch.bfloat16, 16, 4, 128, mixed_lengths(seed=3), 3)
    w = torch.randn(128, 128, device=DEVICE, dtype=torch.bfloat16) / 11

    def layer(q, k, v):
        return flash_varlen_attention(q @ w, k, v, cu, mx, dropout_p=P) @ w

    torch.manual_seed(1)
    out, grads = _fwd_bwd(layer, (q, k, v), do)
    torch.manual_seed(1)
    ckpt_out, ckpt_grads = _fwd_bwd(
        lambda q, k, v: torch.utils.checkpoint.checkpoint(layer, q, k, v, use_reentrant=False),
        (q, k, v), do,
    )  # fmt: skip
    assert torch.equal(out, ckpt_out)
    for g, c in zip(grads, ckpt_grads):
        assert torch.equal(g, c)


def test_dispatcher_and_custom_op_run_the_kernel_with_dropout():
    q, k, v, do, cu, mx = attention_case(torch.bfloat16, 32, 8, 128, mixed_lengths(seed=4), 4)

    def flash(q, k, v):
        return flash_varlen_attention(q, k, v, cu, mx, dropout_p=P, seed=9)

    ref, ref_grads = _fwd_bwd(flash, (q, k, v), do)
    for fn in (kernels.varlen_attention, ops.varlen_attention):
        out, grads = _fwd_bwd(
            lambda q, k, v, fn=fn: fn(q, k, v, cu, mx, dropout_p=P, seed=9), (q, k, v), do
        )
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=0, rtol=0)
    compiled = torch.compile(
        lambda q, k, v: ops.varlen_attention(q, k, v, cu, mx, dropout_p=P, seed=9),
        backend="aot_eager", fullgraph=True,
    )  # fmt: skip
    torch.testing.assert_close(compiled(q, k, v), ref, atol=0, rtol=0)
