"""Varlen (packed) attention over texts laid back to back.

Layout (the flash-attention varlen convention, see DESIGN.md):

    q           [total_tokens, Hq, D]    float32 / float16 / bfloat16
    k, v        [total_tokens, Hkv, D]   same dtype, Hq % Hkv == 0 (GQA)
    cu_seqlens  [n_texts + 1] int32      start offset of each text, cu_seqlens[-1] == total_tokens
    max_seqlen  int                      longest text

Token i attends to token j only when both lie in the same text (and j <= i when ``causal``).

This module holds the two PyTorch paths: :func:`varlen_attention_ref`, the plain eager
reference (explicit scores in float32; what tests compare against), and
:func:`varlen_attention_sdpa`, torch's scaled_dot_product_attention run per text, which never
computes a padded position. The Triton kernel plugs into :func:`llm2vec_fast.kernels.varlen_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    """Shape checks shared by every varlen attention path (a clear ValueError)."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be [total_tokens, heads, head_dim]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} do not match")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be a 1-D tensor [n_texts + 1]")


def _segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu_seqlens.tolist()
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def varlen_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Eager reference: per text, ``softmax(q k^T * scale) v`` computed in float32.

    ``dropout_p`` drops attention probabilities (and rescales the rest), as HF's eager
    attention does in training mode. Returns ``[total_tokens, Hq, D]`` in q's dtype. In float32
    this is HF's eager attention.
    """
    check_qkv(q, k, v, cu_seqlens)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    groups = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    for s, e in _segments(cu_seqlens):
        qs = q[s:e].float().transpose(0, 1)  # [Hq, L, D]
        ks = k[s:e].float().transpose(0, 1).repeat_interleave(groups, dim=0)
        vs = v[s:e].float().transpose(0, 1).repeat_interleave(groups, dim=0)
        scores = torch.matmul(qs, ks.transpose(1, 2)) * scale
        if causal:
            n = e - s
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        out[s:e] = torch.matmul(probs, vs).transpose(0, 1).to(q.dtype)
    return out


def varlen_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """torch SDPA once per text (no padding, no mask tensor). Shapes as :func:`varlen_attention_ref`;
    ``dropout_p`` is SDPA's dropout on the attention probabilities.

    Texts of equal length are stacked into one SDPA call, so a length-sorted packed batch costs
    one call per distinct length rather than one per text.
    """
    check_qkv(q, k, v, cu_seqlens)
    groups = q.shape[1] // k.shape[1]
    out = None  # in SDPA's output dtype: under autocast, bf16 for float32 q
    segs = _segments(cu_seqlens)
    # group texts by length so equal-length texts share one call
    by_len: dict[int, list[int]] = {}
    for s, e in segs:
        by_len.setdefault(e - s, []).append(s)
    for n, starts in by_len.items():
        idx = torch.as_tensor(starts, device=q.device)[:, None] + torch.arange(n, device=q.device)
        qs = q[idx].transpose(1, 2)  # [B, Hq, n, D]
        ks = k[idx].transpose(1, 2)
        vs = v[idx].transpose(1, 2)
        o = F.scaled_dot_product_attention(
            qs,
            ks,
            vs,
            is_causal=causal,
            scale=softmax_scale,
            enable_gqa=groups > 1,
            dropout_p=dropout_p,
        )
        if out is None:
            out = q.new_empty(q.shape, dtype=o.dtype)
        out[idx] = o.transpose(1, 2)
    # zero-length texts own no rows; every other row was written above
    return out if out is not None else torch.empty_like(q)
