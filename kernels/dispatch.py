"""The device dispatchers of the kernels that have more than one backend.

CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``) run the Triton kernels; other
tensors run the PyTorch references (torch SDPA for attention), so the library works, and is
tested, without a GPU. Re-exported by :mod:`llm2vec_fast.kernels`.
"""

from __future__ import annotations

import contextlib

import torch

from ._launch import INTERPRET, use_triton
from .attention import varlen_attention_sdpa
from .flash_varlen import _splitmix64, flash_varlen_attention
from .pooling import segment_pool_ref, segment_pool_triton

__all__ = ["segment_pool", "varlen_attention"]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Attention inside each packed text: q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` -> ``[T, Hq, D]``.

    ``cu_seqlens`` int32 ``[n_texts + 1]``; ``max_seqlen`` at least the longest text;
    ``causal=False`` is LLM2Vec's bidirectional attention. Differentiable.

    float16/bfloat16 CUDA tensors (and any dtype under ``TRITON_INTERPRET=1``) run the Triton
    flash kernel (:mod:`llm2vec_fast.kernels.flash_varlen`); float32 on CUDA and CPU tensors run
    torch SDPA once per text. ``dropout_p > 0`` (attention-probability dropout, SimCSE training)
    drops probabilities on either path. Its mask comes from ``seed`` (an int) and ``offset``, or,
    with ``seed=None``, from torch's default generator on q's device (``torch.manual_seed``
    reproduces it). The two paths draw different masks from one seed: the flash kernel's is
    :func:`llm2vec_fast.kernels.flash_varlen.flash_varlen_dropout_mask`; SDPA's is torch's dropout
    under a generator seeded from ``(seed, offset)``.
    """
    if use_triton(q, k, v) and (INTERPRET or q.dtype != torch.float32):
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        return flash_varlen_attention(
            q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, dropout_p, seed, offset
        )
    if dropout_p > 0.0 and seed is not None:
        with _seeded_rng(q.device, seed, offset):
            return varlen_attention_sdpa(
                q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, dropout_p
            )
    return varlen_attention_sdpa(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, dropout_p)


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int, offset: int):
    """torch's default generator of ``device`` seeded from ``(seed, offset)`` inside the block
    and restored after it (SDPA's dropout then draws a mask that is a function of the seed)."""
    cuda = device.type == "cuda"
    index = (
        (device.index if device.index is not None else torch.cuda.current_device()) if cuda else 0
    )
    with torch.random.fork_rng(devices=[index] if cuda else []):
        gen = torch.cuda.default_generators[index] if cuda else torch.default_generator
        gen.manual_seed(_splitmix64(int(seed) ^ _splitmix64(int(offset))) & ((1 << 63) - 1))
        yield


def segment_pool(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """Pool each packed text to one float32 vector: ``[T, H] -> [n_texts, H]``.

    See :mod:`llm2vec_fast.kernels.pooling` for the modes. Differentiable. One read of the
    hidden states in the Triton kernel (CUDA, or under ``TRITON_INTERPRET=1``).
    """
    if use_triton(hidden):
        return segment_pool_triton(hidden, cu_seqlens, pool_mask, mode)
    return segment_pool_ref(hidden, cu_seqlens, pool_mask, mode)
