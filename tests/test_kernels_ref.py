"""The PyTorch paths of the kernels: varlen attention and segment pooling.

Attention is judged against a float64 reference: the error of each path in a dtype must be at
most 2x (plus a small floor) the error of plain torch attention in that dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from llm2vec_fast.kernels import (
    segment_pool,
    varlen_attention,
    varlen_attention_ref,
    varlen_attention_sdpa,
)

LENGTHS = [
    [1],
    [7, 1, 97],
    [3] * 17 + [130],  # many short texts and one long one
    [0, 5, 0, 2],  # empty texts own no rows
]


def _cu(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu


def _f64_attention(q, k, v, lengths, causal, scale):
    out = torch.zeros(q.shape, dtype=torch.float64)
    groups = q.shape[1] // k.shape[1]
    s = 0
    for n in lengths:
        if n:
            qs = q[s : s + n].double().transpose(0, 1)
            ks = k[s : s + n].double().transpose(0, 1).repeat_interleave(groups, 0)
            vs = v[s : s + n].double().transpose(0, 1).repeat_interleave(groups, 0)
            w = qs @ ks.transpose(1, 2) * scale
            if causal:
                w = w.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
            out[s : s + n] = (w.softmax(-1) @ vs).transpose(0, 1)
        s += n
    return out


def _plain_torch(q, k, v, lengths, causal, scale):
    """torch SDPA in the test dtype, one text at a time: the baseline error."""
    out = torch.zeros_like(q)
    groups = q.shape[1] // k.shape[1]
    s = 0
    for n in lengths:
        if n:
            o = torch.nn.functional.scaled_dot_product_attention(
                q[s : s + n].transpose(0, 1)[None],
                k[s : s + n].transpose(0, 1).repeat_interleave(groups, 0)[None],
                v[s : s + n].transpose(0, 1).repeat_interleave(groups, 0)[None],
                is_causal=causal,
                scale=scale,
            )
            out[s : s + n] = o[0].transpose(0, 1)
        s += n
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda x: f"n{len(x)}-max{max(x)}")
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (8, 1)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fn", [varlen_attention_ref, varlen_attention_sdpa, varlen_attention])
def test_varlen_attention(fn, dtype, lengths, heads, causal):
    hq, hkv = heads
    d = 40  # not a power of two
    total = sum(lengths)
    g = torch.Generator().manual_seed(hash((str(lengths), hq, hkv, causal)) % 10_000)
    q, k, v = (torch.randn(total, h, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    scale = 0.3
    out = fn(q, k, v, _cu(lengths), max(lengths), causal=causal, softmax_scale=scale)
    assert out.shape == q.shape and out.dtype == dtype
    ref = _f64_attention(q, k, v, lengths, causal, scale)
    err = (out.double() - ref).abs().max().item()
    base = (_plain_torch(q, k, v, lengths, causal, scale).double() - ref).abs().max().item()
    assert err <= 2 * base + 1e-6, f"error {err:.3g} vs torch's own {base:.3g}"


def test_varlen_attention_is_differentiable():
    lengths = [5, 3]
    q, k, v = (torch.randn(8, 2, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: varlen_attention(q, k, v, _cu(lengths), 5), (q, k, v)
    )


def test_varlen_attention_shape_errors():
    q = torch.randn(6, 3, 8)
    k = torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        varlen_attention(q, k, k, _cu([6]), 6)
    with pytest.raises(ValueError, match=r"\[total_tokens, heads, head_dim\]"):
        varlen_attention(q[0], k, k, _cu([6]), 6)


def _padded_pool(hidden, lengths, mask, mode):
    """Pooling written plainly, one text at a time."""
    out = []
    s = 0
    for n in lengths:
        h, m = hidden[s : s + n].double(), mask[s : s + n]
        s += n
        if mode == "mean":
            out.append(h[m].mean(0) if m.any() else h.mean(0))
        elif mode == "weighted_mean":
            w = torch.zeros(n, dtype=torch.float64)
            w[m] = torch.arange(1, int(m.sum()) + 1, dtype=torch.float64)
            out.append((h * (w / w.sum().clamp_min(1e-9))[:, None]).sum(0))
        elif mode == "last_token":
            out.append(h[-1])
        elif mode == "bos_token":
            out.append(h[m][0])
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "last_token", "bos_token"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segment_pool(mode, dtype, tol, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 97, 2, 30]
    total = sum(lengths)
    hidden = torch.randn(total, 33, generator=g).to(dtype)
    mask = torch.rand(total, generator=g) < 0.5
    cu = _cu(lengths)
    if mode == "bos_token":
        mask[cu[:-1].long()] = True
    else:
        mask[cu[1].item() : cu[2].item()] = False  # a text with nothing to pool
    out = segment_pool(hidden, cu, mask, mode)
    assert out.dtype == torch.float32 and out.shape == (len(lengths), 33)
    assert_close(out.double(), _padded_pool(hidden, lengths, mask, mode), atol=tol, rtol=tol)


def test_segment_pool_gradients_and_errors():
    lengths = [4, 3]
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    for mode in ("mean", "weighted_mean", "last_token", "bos_token"):
        assert torch.autograd.gradcheck(
            lambda h, mode=mode: segment_pool(h, _cu(lengths), mask, mode), (hidden,)
        )
    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        segment_pool(hidden, _cu(lengths), mask, "max")
    with pytest.raises(ValueError, match="contains no BOS token"):
        segment_pool(hidden, _cu(lengths), torch.zeros(7, dtype=torch.bool), "bos_token")


def test_sdpa_path_under_bf16_autocast():
    """float32 q/k/v under CPU bf16 autocast: the output is SDPA's bfloat16, close to the
    float32 reference."""
    from llm2vec_fast.kernels.attention import varlen_attention_ref, varlen_attention_sdpa

    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(13, 4, 16, generator=g) for _ in range(3))
    cu = torch.tensor([0, 6, 13], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = varlen_attention_sdpa(q, k, v, cu, 7)
    assert out.dtype == torch.bfloat16
    ref = varlen_attention_ref(q, k, v, cu, 7)
    assert (out.float() - ref).abs().max() < 3e-2
