"""Varlen (packed) attention over texts laid back to back.

Layout (the flash-attention varlen convention, the packed batch of llm2vec_fast.packing):

    q           [total_tokens, Hq, D]    float32 / float16 / bfloat16
    k, v        [total_tokens, Hkv, D]   same dtype, Hq % Hkv == 0 (GQA)
    cu_seqlens  [n_texts + 1] int32      start offset of each text, cu_seqlens[-1] == total_tokens
    max_seqlen  int                      longest text

Token i attends to token j only when both lie in the same text (and j <= i when ``causal``).

This module holds the PyTorch paths: :func:`varlen_attention_ref`, the plain eager reference
(explicit scores in float32; what tests compare against); :func:`varlen_attention_sdpa`, torch's
scaled_dot_product_attention run per text, which never computes a padded position; and
:func:`varlen_attention_fwd_torch` / :func:`varlen_attention_bwd_torch`, the flash algorithm's
forward and backward in PyTorch (the forward returns the LSE, the backward recomputes P from it),
which the custom ops of :mod:`llm2vec_fast.kernels.ops` run where the Triton kernel does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dropout_seeds import check_dropout, torch_seed
from .varlen import Varlen


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


# score elements one batched computation of the PyTorch flash path may hold (256 MiB in float32)
_SCORES_PER_GROUP = 1 << 26


def _length_groups(
    cu_seqlens: torch.Tensor, heads: int, device: torch.device
) -> list[torch.Tensor]:
    """Row indices ``[B, n]`` of texts of length n > 0, shortest first, as many texts of one
    length in a group as keep its ``[B, heads, n, n]`` scores under ``_SCORES_PER_GROUP``."""
    by_len: dict[int, list[int]] = {}
    for s, e in _segments(cu_seqlens):
        by_len.setdefault(e - s, []).append(s)
    groups = []
    for n in sorted(by_len):
        step = max(1, _SCORES_PER_GROUP // (heads * n * n))
        for i in range(0, len(by_len[n]), step):
            starts = torch.as_tensor(by_len[n][i : i + step], device=device)
            groups.append(starts[:, None] + torch.arange(n, device=device))
    return groups


class _Texts:
    """One length group of texts as ``[B, Hq, n, D]`` tensors in the compute dtype (float32,
    float64 for float64 input), K and V repeated over the query heads of each GQA group."""

    def __init__(self, idx, q, k, v, scale, causal):
        ct = torch.promote_types(q.dtype, torch.float32)
        self.groups = q.shape[1] // k.shape[1]
        self.q = q[idx].transpose(1, 2).to(ct)
        self.k = k[idx].transpose(1, 2).to(ct).repeat_interleave(self.groups, 1)
        self.v = v[idx].transpose(1, 2).to(ct).repeat_interleave(self.groups, 1)
        s = torch.matmul(self.q, self.k.transpose(-1, -2)) * scale
        if causal:
            n = idx.shape[1]
            s = s.masked_fill(
                torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), -torch.inf
            )
        self.scores = s

    def kv_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Hq, n, D]`` summed over each GQA group -> ``[B, Hkv, n, D]``."""
        b, hq, n, d = x.shape
        return x.view(b, hq // self.groups, self.groups, n, d).sum(2)


def _dropout_scales(shapes, device, dtype, dropout_p, seed, offset):
    """Per length group, the kept probabilities' factor ``keep / (1 - p)`` (None without
    dropout): a function of ``(seed, offset)`` and the batch's lengths only, so the backward
    draws the forward's masks again."""
    if dropout_p == 0.0:
        return [None] * len(shapes)
    gen = torch.Generator(device=device).manual_seed(torch_seed(seed, offset))
    return [
        (torch.rand(shape, generator=gen, device=device) >= dropout_p).to(dtype) / (1 - dropout_p)
        for shape in shapes
    ]


def varlen_attention_fwd_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, opts: Varlen
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch forward: ``(out [T, Hq, D] q.dtype, lse [Hq, T])``, the LSE in float32 (float64
    for float64 input), natural log, as :func:`llm2vec_fast.kernels.flash_varlen.flash_varlen_fwd`.

    Texts of equal length share one batched computation. ``opts.dropout_p > 0`` drops
    probabilities by a mask drawn from a torch generator seeded from ``(seed, offset)`` (not the
    Triton kernel's Philox mask)."""
    check_qkv(q, k, v, opts.cu_seqlens)
    p = check_dropout(opts.dropout_p, opts.seed, opts.offset)
    scale, causal = opts.scale(q.shape[-1]), opts.causal
    ct = torch.promote_types(q.dtype, torch.float32)
    out = torch.zeros_like(q)
    lse = q.new_zeros((q.shape[1], q.shape[0]), dtype=ct)
    groups = _length_groups(opts.cu_seqlens, q.shape[1], q.device)
    shapes = [(i.shape[0], q.shape[1], i.shape[1], i.shape[1]) for i in groups]
    for idx, z in zip(groups, _dropout_scales(shapes, q.device, ct, p, opts.seed, opts.offset)):
        t = _Texts(idx, q, k, v, scale, causal)
        row_lse = torch.logsumexp(t.scores, -1)
        probs = torch.exp(t.scores - row_lse[..., None])
        if z is not None:
            probs = probs * z
        out[idx] = torch.matmul(probs, t.v).transpose(1, 2).to(q.dtype)
        lse[:, idx] = row_lse.transpose(0, 1)
    return out, lse


def varlen_attention_bwd_torch(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    opts: Varlen,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch backward of :func:`varlen_attention_fwd_torch`: ``(dq, dk, dv)`` in the inputs'
    dtypes. P comes from the saved ``lse`` (``exp(S - lse)``) and the dropout masks are drawn
    again from ``(seed, offset)``: the forward's output is never recomputed."""
    p = check_dropout(opts.dropout_p, opts.seed, opts.offset)
    scale, causal = opts.scale(q.shape[-1]), opts.causal
    ct = torch.promote_types(q.dtype, torch.float32)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    groups = _length_groups(opts.cu_seqlens, q.shape[1], q.device)
    shapes = [(i.shape[0], q.shape[1], i.shape[1], i.shape[1]) for i in groups]
    for idx, z in zip(groups, _dropout_scales(shapes, q.device, ct, p, opts.seed, opts.offset)):
        t = _Texts(idx, q, k, v, scale, causal)
        probs = torch.exp(t.scores - lse[:, idx].transpose(0, 1)[..., None].to(ct))
        dos = do[idx].transpose(1, 2).to(ct)
        dp = torch.matmul(dos, t.v.transpose(-1, -2))
        kept = probs
        if z is not None:
            kept, dp = probs * z, dp * z
        delta = (dos * out[idx].transpose(1, 2).to(ct)).sum(-1, keepdim=True)
        ds = probs * (dp - delta) * scale
        dq[idx] = torch.matmul(ds, t.k).transpose(1, 2).to(q.dtype)
        dk[idx] = t.kv_sum(torch.matmul(ds.transpose(-1, -2), t.q)).transpose(1, 2).to(k.dtype)
        dv[idx] = t.kv_sum(torch.matmul(kept.transpose(-1, -2), dos)).transpose(1, 2).to(v.dtype)
    return dq, dk, dv
