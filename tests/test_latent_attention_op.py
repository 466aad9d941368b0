"""The latent attention op (``llm2vec_fast.kernels.latent_attention``) on its PyTorch path.

Without the interpreter the op runs :func:`llm2vec_fast.kernels.latent_attention_ref` and its
backward from the LSE. Both are checked against the plain formula ``softmax(q k^T * scale) v``
in float64 (its gradients by float64 autograd), over empty, one-token and odd token counts, one
to 512 latents, one and eight heads and head dims 16, 72 and 576 (576 > 256: the width the
Triton path never takes), each case with a fresh seed printed on failure. The custom ops pass
``torch.library.opcheck`` and run inside ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch.testing import assert_close

from llm2vec_fast.kernels import latent_attention, latent_attention_ref

SHAPES = [  # (T, R, H, D)
    (0, 17, 8, 16), (1, 1, 1, 16), (37, 17, 8, 72), (37, 512, 1, 16), (300, 17, 1, 72),
    (300, 512, 8, 16), (37, 1, 8, 576), (1, 512, 1, 576),
]  # fmt: skip


def _fresh_seed() -> int:
    return random.SystemRandom().randrange(1 << 31)


def _inputs(t, r, h, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(t, h, d, generator=g, dtype=torch.float64) * 1.5
    k = torch.randn(r, h, d, generator=g, dtype=torch.float64)
    v = torch.randn(r, h, d, generator=g, dtype=torch.float64)
    do = torch.randn(t, h, d, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (q, k, v)], do.to(dtype)


def plain(q, k, v, scale=None):
    """softmax(q k^T * scale) v per head, the formula itself."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = torch.softmax(torch.einsum("thd,rhd->htr", q, k) * scale, dim=-1)
    return torch.einsum("htr,rhd->thd", p, v)


def _fwd_bwd(fn, inputs, do):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    if out.numel() == 0:
        return out, [torch.zeros_like(x) for x in leaves]
    return out, torch.autograd.grad(out, leaves, do.to(out.dtype))


@pytest.mark.parametrize(
    "t, r, h, d", SHAPES, ids=[f"T{t}-R{r}-H{h}-D{d}" for t, r, h, d in SHAPES]
)
def test_matches_the_formula_in_float64(t, r, h, d):
    seed = _fresh_seed()
    inputs, do = _inputs(t, r, h, d, seed, torch.float64)
    out, grads = _fwd_bwd(latent_attention, inputs, do)
    ref, ref_grads = _fwd_bwd(plain, inputs, do)
    assert out.shape == (t, h, d) and out.dtype == torch.float64
    msg = f"seed {seed}"
    assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=msg)
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert_close(g, rg, rtol=1e-9, atol=1e-9, msg=f"d{name}, {msg}")


@pytest.mark.parametrize(
    "t, r, h, d", SHAPES, ids=[f"T{t}-R{r}-H{h}-D{d}" for t, r, h, d in SHAPES]
)
def test_float32_and_half_inputs(t, r, h, d):
    """float32 / bfloat16 inputs (float32 math) against the float64 formula; out in q's dtype."""
    seed = _fresh_seed()
    inputs64, do64 = _inputs(t, r, h, d, seed, torch.float64)
    for dtype, tol in ((torch.float32, 2e-5), (torch.bfloat16, 3e-2)):
        inputs = [x.to(dtype) for x in inputs64]
        out, grads = _fwd_bwd(latent_attention, inputs, do64.to(dtype))
        assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
        # judged against the formula on the same (rounded) inputs
        ref, ref_grads = _fwd_bwd(plain, [x.double() for x in inputs], do64.to(dtype).double())
        msg = f"{dtype}, seed {seed}"
        assert_close(out.double(), ref, rtol=tol, atol=tol, msg=msg)
        # the gradients' common scale: with R = 1, dq and dk are zero up to cancellation
        scale = max([1.0] + [rg.abs().max().item() for rg in ref_grads if rg.numel()])
        for name, g, rg in zip("qkv", grads, ref_grads):
            assert_close(g.double(), rg, rtol=tol, atol=tol * scale, msg=f"d{name}, {msg}")


def test_softmax_scale_and_lse():
    seed = _fresh_seed()
    (q, k, v), do = _inputs(13, 9, 2, 24, seed, torch.float64)
    out, grads = _fwd_bwd(lambda *x: latent_attention(*x, softmax_scale=0.37), [q, k, v], do)
    ref, ref_grads = _fwd_bwd(lambda *x: plain(*x, scale=0.37), [q, k, v], do)
    assert_close(out, ref, msg=f"seed {seed}")
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, msg=f"seed {seed}")
    o, lse = latent_attention_ref(q, k, v, 0.37)
    expected = torch.logsumexp(torch.einsum("thd,rhd->htr", q, k) * 0.37, dim=-1)
    assert lse.shape == (2, 13)
    assert_close(lse, expected)
    o32, lse32 = latent_attention_ref(q.float(), k.float(), v.float(), 0.37)
    assert lse32.dtype == torch.float32 and o32.dtype == torch.float32


def test_strided_views_and_shape_errors():
    """k and v as views of one fused projection (the head's), and clear errors."""
    seed = _fresh_seed()
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(11, 2, 3, 8, generator=g, dtype=torch.float64)
    k, v = kv.unbind(1)
    q = torch.randn(5, 3, 8, generator=g, dtype=torch.float64)
    assert_close(latent_attention(q, k, v), plain(q, k, v), msg=f"seed {seed}")
    with pytest.raises(ValueError, match="do not match"):
        latent_attention(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="R >= 1"):
        latent_attention(q, k[:0], v[:0])
    with pytest.raises(ValueError, match=r"\[T, H, D\]"):
        latent_attention(q[0], k, v)


def test_opcheck():
    torch.manual_seed(7)
    q = torch.randn(9, 2, 16, requires_grad=True)
    k, v = (torch.randn(5, 2, 16, requires_grad=True) for _ in range(2))
    op = torch.ops.llm2vec_fast.latent_attention_forward.default
    torch.library.opcheck(op, (q, k, v, None))
    torch.library.opcheck(op, (q, k, v, 0.25))
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = op(q, k, v, 0.25)
    bwd = torch.ops.llm2vec_fast.latent_attention_backward.default
    torch.library.opcheck(bwd, (torch.randn_like(out), q, k, v, out, lse, 0.25))


def test_compiles_fullgraph():
    torch.manual_seed(8)
    q = torch.randn(7, 2, 16)
    k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 16)

    def f(q, k, v):
        return latent_attention(q, k, v) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_close(compiled(q, k, v), f(q, k, v))
