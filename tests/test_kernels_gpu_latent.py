"""The latent-attention kernels on a CUDA GPU at NV-Embed's pooling shapes (16k packed tokens,
512 latents, 8 heads), against float64.

Every test is marked ``gpu`` and skipped without CUDA (and under ``TRITON_INTERPRET=1``). Results
are judged by flash-attention's rule (:func:`l2vf_support.numerics.assert_close_2x`): the error
against the float64 formula ``softmax(q k^T * scale) v`` may be at most 2x the error of the same
formula in plain PyTorch in the inputs' dtype, plus a small floor.

Run on the GPU machine: ``python -m pytest tests/test_kernels_gpu_latent.py -m gpu -q``.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from l2vf_support.gpu import COMPILED_ON_GPU

pytestmark = COMPILED_ON_GPU

pytest.importorskip("triton")

from l2vf_support.gpu import DEVICE  # noqa: E402
from l2vf_support.numerics import assert_close_2x  # noqa: E402
from llm2vec_fast.kernels import latent_attention  # noqa: E402

la = importlib.import_module("llm2vec_fast.kernels.latent_attention")

T, R, H = 16_384, 512, 8
LOW = [  # dtype, floor (atol)
    pytest.param(torch.bfloat16, 1e-3, id="bf16"),
    pytest.param(torch.float16, 2e-4, id="fp16"),
]


def plain(q, k, v):
    p = torch.softmax(torch.einsum("thd,rhd->htr", q, k) * q.shape[-1] ** -0.5, dim=-1)
    return torch.einsum("htr,rhd->thd", p, v)


def _fwd_bwd(fn, inputs, do):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, do.to(out.dtype)))


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype, atol", LOW)
def test_latent_attention_low_precision(dtype, atol, d):
    g = torch.Generator(device=DEVICE).manual_seed(d)
    q = torch.randn(T, H, d, device=DEVICE, generator=g).to(dtype)
    # a fused kv projection: k and v are strided views, as the head passes them
    kv = torch.randn(R, 2, H, d, device=DEVICE, generator=g).to(dtype)
    k, v = kv.unbind(1)
    do = torch.randn(T, H, d, device=DEVICE, generator=g).to(dtype)
    assert la.uses_triton(q, k, v)
    got = _fwd_bwd(latent_attention, (q, k, v), do)
    ref = _fwd_bwd(plain, (q, k, v), do)
    ref64 = _fwd_bwd(plain, [x.double() for x in (q, k, v)], do.double())
    for name, a, r, r64 in zip(("out", "dq", "dk", "dv"), got, ref, ref64):
        assert a.dtype == dtype and a.shape == r64.shape, name
        # dk, dv sum over 16k tokens: the floor scales with the gradient's size
        floor = atol * max(1.0, r64.abs().max().item())
        assert_close_2x(a, r, r64, atol=floor, rtol=0, what=f"{name} D={d}")


def test_float32_cuda_takes_the_pytorch_path():
    q = torch.randn(33, 2, 64, device=DEVICE)
    k, v = torch.randn(5, 2, 64, device=DEVICE), torch.randn(5, 2, 64, device=DEVICE)
    assert not la.uses_triton(q, k, v)
    torch.testing.assert_close(latent_attention(q, k, v), plain(q, k, v), atol=1e-5, rtol=1e-5)
