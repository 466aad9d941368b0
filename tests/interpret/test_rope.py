"""RoPE Triton kernels under the interpreter against the PyTorch reference.

Run: ``TRITON_INTERPRET=1 python -m pytest tests/interpret -q`` (skipped in any other process).
Outputs are compared with the reference in the same dtype (the kernel rounds as eager PyTorch
does); outputs and gradients are judged against a float64 reference: the kernel's error must be
at most 2x the same-dtype reference's error, plus a floor.
"""

from __future__ import annotations

import zlib

import pytest
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from l2vf_support.numerics import assert_close_2x  # noqa: E402
from llm2vec_fast.kernels import apply_rope, rope_ref  # noqa: E402
from llm2vec_fast.kernels._launch import use_triton  # noqa: E402

DTYPES = [  # (dtype, atol, rtol): the floor for each dtype (bf16 is wrong in the interpreter)
    pytest.param(torch.float32, 1e-5, 1.3e-6, id="fp32"),
    pytest.param(torch.float16, 1e-3, 1e-3, id="fp16"),
]
SHAPES = [  # (T, Hq, Hkv, D)
    (1, 4, 1, 64),
    (7, 4, 1, 80),
    (97, 4, 1, 128),
    (5, 3, 3, 64),
]


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.name.encode()))


def _inv_freq(d, theta=10000.0):
    return 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))


def _run(fn, q, k, pos, inv, scaling, dq, dk):
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    qo, ko = fn(q, k, pos, inv, scaling)
    gq, gk = torch.autograd.grad((qo, ko), (q, k), (dq.to(qo.dtype), dk.to(ko.dtype)))
    return qo, ko, gq, gk


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "scaling, pos_dtype",
    [(1.0, torch.int32), (0.75, torch.int64)],  # 0.75: a Llama-3 / YaRN-style attention scaling
    ids=["i32", "i64-scaled"],
)
def test_rope(shape, dtype, atol, rtol, scaling, pos_dtype):
    t, hq, hkv, d = shape
    q, k = torch.randn(t, hq, d), torch.randn(t, hkv, d)
    dq, dk = torch.randn(t, hq, d), torch.randn(t, hkv, d)
    pos = torch.randint(0, 4096, (t,), dtype=pos_dtype)
    inv = _inv_freq(d)
    assert use_triton(q)

    out = _run(apply_rope, q.to(dtype), k.to(dtype), pos, inv, scaling, dq, dk)
    ref = _run(rope_ref, q.to(dtype), k.to(dtype), pos, inv, scaling, dq, dk)
    ref64 = _run(rope_ref, q.double(), k.double(), pos, inv, scaling, dq, dk)

    for o, src in zip(out, (q, k, q, k)):
        assert o.dtype == dtype and o.shape == src.shape
    assert_close(out[0], ref[0], atol=atol, rtol=rtol)
    assert_close(out[1], ref[1], atol=atol, rtol=rtol)
    for name, o, r, r64 in zip(("q_out", "k_out", "dq", "dk"), out, ref, ref64):
        assert_close_2x(o, r, r64, atol, rtol, name)


def test_rope_strided_views_of_fused_qkv():
    """q and k as views of one fused [T, (Hq + 2 Hkv) * D] projection (token stride > Hq * D);
    the inputs are not written."""
    t, hq, hkv, d = 7, 4, 2, 64
    qkv = torch.randn(t, (hq + 2 * hkv) * d)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    assert not q.is_contiguous() and not k.is_contiguous()
    before = qkv.clone()
    pos = torch.arange(t, dtype=torch.int32)
    qo, ko = apply_rope(q, k, pos, _inv_freq(d))
    rq, rk = rope_ref(q, k, pos, _inv_freq(d))
    assert_close(qo, rq, atol=1e-5, rtol=1.3e-6)
    assert_close(ko, rk, atol=1e-5, rtol=1.3e-6)
    assert torch.equal(qkv, before)


def test_rope_position_zero_is_identity():
    q, k = torch.randn(3, 2, 64), torch.randn(3, 1, 64)
    qo, ko = apply_rope(q, k, torch.zeros(3, dtype=torch.int32), _inv_freq(64))
    assert torch.equal(qo, q) and torch.equal(ko, k)
