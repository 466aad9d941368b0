"""The latent-attention Triton kernels on the CPU under ``TRITON_INTERPRET=1``.

Run on its own: ``TRITON_INTERPRET=1 python -m pytest -q tests/interpret/test_latent_attention.py``
(float32 and float16 only: bfloat16 loads are wrong in the interpreter). Outputs and gradients
are judged against the float64 formula ``softmax(q k^T * scale) v``: the kernels' error may be
at most 2x the error of the same formula in the inputs' dtype, plus a floor per dtype. Small
tiles exercise the loops over latents and tokens and the split dK/dV sum; a launch spy shows
the backward launches no forward kernel; and the pooling head gives the same embeddings and
gradients with the kernel (``fused``) as on torch's path. GPU compiles:
tests/test_kernels_sm90_latent.py.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.testing import assert_close

from l2vf_support.launches import spy_on, take_counts
from l2vf_support.numerics import assert_close_2x
from llm2vec_fast.kernels import latent_attention
from llm2vec_fast.latent_attention import LatentAttentionConfig, LatentAttentionHead

la = importlib.import_module("llm2vec_fast.kernels.latent_attention")

pytestmark = pytest.mark.usefixtures("seed_from_test_name")

DTYPES = [  # dtype, floor (atol)
    pytest.param(torch.float32, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-3, id="fp16"),
]
SHAPES = [  # (T, R, H, D)
    (1, 1, 1, 16), (37, 17, 2, 72), (130, 64, 3, 64), (130, 17, 4, 16), (37, 64, 1, 72),
    (1, 17, 4, 64),
]  # fmt: skip
SHAPE_IDS = [f"T{t}-R{r}-H{h}-D{d}" for t, r, h, d in SHAPES]
FORWARD = "latent_attention_fwd_kernel"
BACKWARD = ("latent_attention_bwd_dq_kernel", "latent_attention_bwd_dkdv_kernel")


def plain(q, k, v, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = torch.softmax(torch.einsum("thd,rhd->htr", q, k) * scale, dim=-1)
    return torch.einsum("htr,rhd->thd", p, v)


def _case(t, r, h, d, dtype):
    q = torch.randn(t, h, d) * 1.5
    k, v = torch.randn(r, h, d), torch.randn(r, h, d)
    do = torch.randn(t, h, d)
    return [x.to(dtype) for x in (q, k, v)], do.to(dtype)


def _fwd_bwd(fn, inputs, do):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, do.to(out.dtype))


def _judge(got, inputs, do, atol, scale=None):
    """got = (out, dq, dk, dv) against the float64 formula, by the 2x rule."""
    f = lambda *x: plain(*x, scale=scale)  # noqa: E731
    ref = _fwd_bwd(f, inputs, do)  # the formula in the inputs' dtype
    ref64 = _fwd_bwd(f, [x.double() for x in inputs], do.double())
    for name, g, r, r64 in zip(("out", "dq", "dk", "dv"), got, (ref[0], *ref[1]),
                               (ref64[0], *ref64[1])):  # fmt: skip
        assert g.dtype == inputs[0].dtype and g.shape == r64.shape, name
        assert_close_2x(g, r, r64, atol=atol, rtol=0, what=name)


@pytest.mark.parametrize("t, r, h, d", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_op_matches_the_formula(dtype, atol, t, r, h, d):
    inputs, do = _case(t, r, h, d, dtype)
    assert la.uses_triton(*inputs)
    out, grads = _fwd_bwd(latent_attention, inputs, do)
    _judge((out, *grads), inputs, do, atol)


@pytest.mark.parametrize("dtype, atol", DTYPES)
def test_small_tiles_loop_and_split(monkeypatch, dtype, atol):
    """16 x 16 tiles: 5 latent blocks with a ragged last one, 9 token blocks, dK/dV in 3 token
    splits summed in float32, a head dim (24) below its block (32), a softmax scale."""
    monkeypatch.setattr(la, "MIN_SPLIT_TOKENS", 40)
    t, r, h, d = 130, 75, 2, 24
    tiles = la.LatentTiles(32, 16, 16, 4, 1, 16, 16, 4, 16, 16, 4, 1)
    assert la.dkdv_splits(t, r, h, tiles)[0] == 3
    inputs, do = _case(t, r, h, d, dtype)
    out, lse = la.latent_attention_fwd(*inputs, 0.3, tiles=tiles)
    grads = la.latent_attention_bwd(do, *inputs, out, lse, 0.3, tiles=tiles)
    _judge((out, *grads), inputs, do, atol, scale=0.3)
    _, lse_ref = la.latent_attention_ref(*inputs, 0.3)
    assert_close(lse, lse_ref, atol=1e-4, rtol=1e-5)


def test_empty_batch_and_strided_views():
    kv = torch.randn(17, 2, 3, 16)
    k, v = kv.unbind(1)  # views of one fused projection, as the head passes them
    q = torch.randn(0, 3, 16, requires_grad=True)
    out = latent_attention(q, k, v)
    assert out.shape == (0, 3, 16)
    q = torch.randn(9, 3, 16)
    assert_close(latent_attention(q, k, v), plain(q, k, v), atol=1e-5, rtol=1e-5)
    dq, dk, dv = la.latent_attention_bwd(*[torch.zeros(0, 3, 16)] * 2, k, v,
                                         torch.zeros(0, 3, 16), torch.zeros(3, 0))  # fmt: skip
    assert dq.shape == (0, 3, 16) and not dk.any() and not dv.any()


def test_backward_launches_no_forward_kernel(monkeypatch):
    spies = spy_on(monkeypatch, la, (FORWARD, *BACKWARD))

    def counts():
        return take_counts(spies)

    q = torch.randn(37, 2, 16, requires_grad=True)
    k, v = (torch.randn(17, 2, 16, requires_grad=True) for _ in range(2))
    out = latent_attention(q, k, v)
    assert counts() == {FORWARD: 1, **dict.fromkeys(BACKWARD, 0)}
    out.backward(torch.randn_like(out))
    assert counts() == {FORWARD: 0, **dict.fromkeys(BACKWARD, 1)}
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_head_fused_matches_torch_path():
    """The pooling head with the kernels (``fused``: latent attention and segment pooling) and
    on torch's path (SDPA): the same embeddings and parameter/input gradients, odd lengths, an
    instruction left out of the pool."""
    cfg = LatentAttentionConfig(num_latents=17, num_heads=2, head_dim=32)
    head = LatentAttentionHead(32, cfg)
    lengths = [1, 7, 33, 2, 13]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    hidden = torch.randn(sum(lengths), 32)
    mask = torch.ones(sum(lengths), dtype=torch.bool)
    mask[int(cu[2]) : int(cu[2]) + 3] = False  # text 2's instruction
    w = torch.randn(len(lengths), 32)
    results = []
    for fused in (True, False):
        head.fused = fused
        head.zero_grad()
        x = hidden.clone().requires_grad_(True)
        emb = head(x, cu, mask)
        (emb * w).sum().backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()}
        results.append((emb.detach(), x.grad, grads))
    (e1, x1, g1), (e0, x0, g0) = results
    assert e1.shape == (len(lengths), 32)
    assert_close(e1, e0, atol=2e-5, rtol=1e-5)
    assert_close(x1, x0, atol=2e-5, rtol=1e-5)
    assert g1.keys() == g0.keys()
    for name in g1:
        assert_close(g1[name], g0[name], atol=5e-5, rtol=1e-4, msg=name)
