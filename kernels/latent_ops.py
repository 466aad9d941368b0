"""The latent attention as torch custom ops: ``llm2vec_fast::latent_attention_forward`` /
``latent_attention_backward``, with one autograd registration, as :mod:`.ops` defines the
other kernels (a module of its own only to keep files short)::

    latent_attention_forward(q, k, v, softmax_scale) -> (out [T, H, D], lse [H, T] float32)
    latent_attention_backward(do, q, k, v, out, lse, softmax_scale) -> (dq, dk, dv)

The backward recomputes P from the saved LSE; it never reruns the forward. Both run the Triton
kernels of :mod:`.latent_attention` for CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``)
with head dims up to 256, its PyTorch path otherwise (see that module for why wide heads stay
there). Gradients flow to q, k and v; the LSE gets none. Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .latent_attention import check_latent_qkv, latent_attention_bwd, latent_attention_fwd
from .op_registry import define_pair, get_op

__all__ = ["OPS", "latent_attention"]

OPS = ("latent_attention",)


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_latent_qkv(q, k, v)
    out, lse = latent_attention_fwd(q, k, v, softmax_scale)
    return out.contiguous(), lse.contiguous()


def _forward_fake(q, k, v, softmax_scale):
    check_latent_qkv(q, k, v)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)


def _backward(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    softmax_scale: float | None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    dq, dk, dv = latent_attention_bwd(do, q, k, v, out, lse, softmax_scale)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


def _backward_fake(do, q, k, v, out, lse, softmax_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, softmax_scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.softmax_scale = softmax_scale


def _autograd_bwd(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dq, dk, dv = get_op("latent_attention_backward")(dout, q, k, v, out, lse, ctx.softmax_scale)
    return dq, dk, dv, None


define_pair(
    "latent_attention", _forward, _forward_fake, _backward, _backward_fake, _setup, _autograd_bwd
)


def latent_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None
) -> torch.Tensor:
    """Every token's query against one shared set of latent keys/values, differentiable in q, k
    and v: q ``[T, H, D]`` (T may be 0), k and v ``[R, H, D]`` (R >= 1) -> ``softmax(q k^T *
    scale) v`` per head, ``[T, H, D]`` in q's dtype; ``softmax_scale`` None means ``D ** -0.5``.

    The Triton flash kernels of :mod:`llm2vec_fast.kernels.latent_attention` for float16,
    bfloat16 and float32 CUDA tensors with D <= 256 (float32 accumulation, no ``[T, H, R]``
    score matrix in memory), its PyTorch path otherwise (CPU, D > 256, float64)."""
    scale = None if softmax_scale is None else float(softmax_scale)
    return get_op("latent_attention_forward")(q, k, v, scale)[0]
