"""Kernels of llm2vec-fast, each beside its PyTorch reference.

Public entry points dispatch on the device: the Triton kernel for CUDA tensors (and for CPU
tensors under ``TRITON_INTERPRET=1``), the PyTorch reference otherwise, so the library works,
and is tested, without a GPU. Each kernel module holds its ``@triton.jit`` kernels, launchers,
autograd.Function and ``<op>_ref``.
"""

from __future__ import annotations

import torch

from ._launch import use_triton
from .attention import varlen_attention_ref, varlen_attention_sdpa
from .glu import gated_act, gated_act_ref
from .pooling import POOLING_MODES, segment_pool_ref
from .rms_norm import rms_norm, rms_norm_ref
from .rope import apply_rope, rope_ref

__all__ = [
    "POOLING_MODES",
    "apply_rope",
    "gated_act",
    "gated_act_ref",
    "rms_norm",
    "rms_norm_ref",
    "rope_ref",
    "segment_pool",
    "segment_pool_ref",
    "varlen_attention",
    "varlen_attention_ref",
    "varlen_attention_sdpa",
]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention inside each packed text: q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` -> ``[T, Hq, D]``.

    ``cu_seqlens`` int32 ``[n_texts + 1]``; ``causal=False`` is LLM2Vec's bidirectional attention.
    Differentiable. Runs torch SDPA per text on every device for now.
    """
    return varlen_attention_sdpa(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale)


def segment_pool(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """Pool each packed text to one float32 vector: ``[T, H] -> [n_texts, H]``.

    See :mod:`llm2vec_fast.kernels.pooling` for the modes. Differentiable.
    """
    return segment_pool_ref(hidden, cu_seqlens, pool_mask, mode)
