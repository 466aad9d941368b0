"""Varlen (packed) flash attention in Triton: tile sizes and launchers.

The kernels live in :mod:`llm2vec_fast.kernels.flash_varlen_kernels`; the differentiable entry
point is :func:`llm2vec_fast.kernels.flash_varlen_attention` (the custom ops of
:mod:`llm2vec_fast.kernels.ops` over :func:`flash_varlen_fwd` and :func:`flash_varlen_bwd`).
The packed layout (the flash-attention varlen convention)::

    q           [T, Hq, D]      float16 / bfloat16 (float32 for tests)
    k, v        [T, Hkv, D]     same dtype; Hq % Hkv == 0 (GQA: query head h reads kv head
                                h // (Hq // Hkv), no K/V copies)
    cu_seqlens  [n_texts + 1]   int32, cu_seqlens[0] == 0, cu_seqlens[-1] == T (zero-length texts
                                allowed: they own no rows)
    max_seqlen  int             the longest text (sizes the grid)
    o           [T, Hq, D]      q's dtype
    lse         [Hq, T]         float32, natural-log logsumexp of each row of ``q k^T * scale``

Head dims 64, 80, 96, 128 and 256 run at their real tile sizes (:func:`flash_varlen_tiles`);
any D <= 256 works (BLOCK_D is D rounded up to a power of two, >= 16, with masked loads). The
last dim of q/k/v/o must have stride 1; token and head strides are free (views of a fused QKV
projection need no copy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import flash_varlen_kernels as fk
from ._launch import HAVE_TRITON, last_dim_contiguous, next_pow2
from .attention import check_qkv
from .dropout_seeds import dropout_args
from .varlen import Varlen

if HAVE_TRITON:
    import triton

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------------------------
# Tile sizes: one function for the launcher and the compile test.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashTiles:
    """Block sizes and launch options of the kernels for one head dim.

    fwd: ``BLOCK_M`` queries x ``BLOCK_N`` keys. dK/dV: a ``BLOCK_N1`` key block, ``BLOCK_M1``
    query steps. dQ: a ``BLOCK_M2`` query block, ``BLOCK_N2`` key steps. ``PRE_BLOCK`` tokens per
    program of the delta preprocess.
    """

    BLOCK_D: int
    BLOCK_M: int
    BLOCK_N: int
    fwd_warps: int
    fwd_stages: int
    BLOCK_M1: int
    BLOCK_N1: int
    dkdv_warps: int
    BLOCK_M2: int
    BLOCK_N2: int
    dq_warps: int
    bwd_stages: int
    PRE_BLOCK: int = 64


def flash_varlen_tiles(
    head_dim: int, dtype: torch.dtype = torch.bfloat16, dropout: bool = False,
    fast_dkdv: bool = True,
) -> FlashTiles:  # fmt: skip
    """Tile sizes for ``head_dim`` (Hopper configs; checked by the sm_90 compile tests; at head
    dims 65-128 timed on an H200 by bench/tune_kernels.py, which chose them).

    16-bit dtypes are the tuned path. float32 keeps the blocks and drops to one pipeline stage
    so shared memory fits: it is for the interpreter and for correctness, not speed (on sm_90 its
    IEEE dots run without tensor cores and its registers spill heavily). ``dropout``: the
    kernels compiled with dropout (the mask does not depend on the tiles); at head dims above 128
    the forward takes 16-key blocks, where 32 spills (tests/test_kernels_sm90_attention_dropout.py).

    ``fast_dkdv``: at head dims 65-128, 16-bit and without dropout, the dK/dV kernel runs one
    warpgroup (4 warps) over 3 stages, 1.74-1.86x the 8 warps over 2 stages that every other
    case keeps, for a stack frame of 8-24 bytes (H200, bench/NOTES.md). The others: with
    dropout 4 warps spill, in float32 they take 14 KB of stack and 4.6x the compile time (13 s),
    and the latent kernels (``fast_dkdv=False``) measured slower with them.
    """
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    bd = max(16, next_pow2(head_dim))
    # Chosen from sm_90 compiles (tests/test_kernels_sm90_attention.py): no spills, registers
    # <= ~250, shared memory well under 227 KB; the bd 128 forward (64x64, 4 warps) was timed on
    # an H200. Block dims of 16/32 with 8 warps fall back from wgmma to mma.sync (D=256
    # backward), which keeps the fp32 accumulators out of local memory.
    if bd <= 64:
        t = FlashTiles(bd, 128, 64, 8, 3, 32, 64, 4, 64, 32, 4, 3)
    elif bd <= 128:
        t = FlashTiles(bd, 64, 64, 4, 3, 32, 64, 8, 64, 32, 4, 2)
        if fast_dkdv and not dropout and dtype != torch.float32:
            t = replace(t, dkdv_warps=4, bwd_stages=3)
    else:
        t = FlashTiles(bd, 128, 32, 8, 2, 16, 32, 8, 32, 16, 8, 1)
    if dropout and bd > 128:
        t = replace(t, BLOCK_N=16)
    if dtype == torch.float32:
        t = replace(t, fwd_stages=1, bwd_stages=1)
    return t


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _check_inputs(q, k, v, cu_seqlens) -> None:
    if not HAVE_TRITON:
        raise RuntimeError("flash_varlen needs triton (the `gpu` extra)")
    check_qkv(q, k, v, cu_seqlens)
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
    ):
        raise ValueError(f"q, k, v must share one of float16/bfloat16/float32; got {q.dtype}")
    if q.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[2]} > {MAX_HEAD_DIM} is not supported")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype != torch.int32:
        raise ValueError("cu_seqlens must be a 1-D int32 tensor [n_texts + 1]")


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 tl.dot would run TF32 on the GPU; "ieee" keeps float32 exact (ignored for 16-bit)
    return "ieee"


def flash_varlen_dropout_mask(
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    dropout_p: float,
    seed: int,
    offset: int = 0,
) -> torch.Tensor:
    """The keep-mask the kernels apply for ``(dropout_p, seed, offset)``, materialised (tests).

    Returns ``keep [num_heads, T, max_seqlen]`` bool on cu_seqlens' device (T =
    ``cu_seqlens[-1]``): ``keep[h, t, j]`` says whether query token t (packed index) of query
    head h keeps its probability of key j of its own text (j counted from the text's start);
    entries with j >= the text's length are False. Runs the same ``_dropout_keep`` as the
    attention kernels (Triton: CUDA, or CPU under ``TRITON_INTERPRET=1``).
    """
    if not HAVE_TRITON:
        raise RuntimeError("flash_varlen needs triton (the `gpu` extra)")
    p, key, off, on = dropout_args(dropout_p, seed, offset)
    total = int(cu_seqlens[-1]) if cu_seqlens.numel() else 0
    mask = torch.zeros((num_heads, total, max_seqlen), dtype=torch.int8, device=cu_seqlens.device)
    n_texts = cu_seqlens.numel() - 1
    if not on:
        mask[:] = 1
        for s, e in zip(cu_seqlens.tolist()[:-1], cu_seqlens.tolist()[1:]):
            mask[:, s:e, e - s :] = 0
        return mask.bool()
    if total and n_texts > 0 and max_seqlen > 0:
        grid = (triton.cdiv(max_seqlen, 32), n_texts, num_heads)
        fk.dropout_mask_kernel[grid](
            mask, cu_seqlens, total, max_seqlen, p, key, off, BLOCK_M=32, BLOCK_N=32
        )
    return mask.bool()


def flash_varlen_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, opts: Varlen, tiles: FlashTiles | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch. Returns ``(o [T, Hq, D] q.dtype, lse [Hq, T] float32, natural log)``.

    ``opts``: the :class:`~llm2vec_fast.kernels.varlen.Varlen` options (``dropout_p > 0`` needs
    a seed; the LSE is the undropped softmax's). ``tiles`` overrides :func:`flash_varlen_tiles`
    (tests use small tiles to exercise loops).
    """
    cu_seqlens, max_seqlen, causal = opts.cu_seqlens, opts.longest(), opts.causal
    _check_inputs(q, k, v, cu_seqlens)
    p, key, off, dropout = dropout_args(opts.dropout_p, opts.seed, opts.offset)
    q, k, v = last_dim_contiguous(q, k, v)
    total, hq, d = q.shape
    hkv = k.shape[1]
    scale = opts.scale(d)
    t = tiles or flash_varlen_tiles(d, q.dtype, dropout)
    if t.BLOCK_D < d:
        raise ValueError(f"tiles.BLOCK_D {t.BLOCK_D} < head_dim {d}")
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((hq, total), dtype=torch.float32, device=q.device)
    n_texts = cu_seqlens.numel() - 1
    if total == 0 or n_texts == 0 or max_seqlen <= 0:
        return o, lse
    grid = (triton.cdiv(max_seqlen, t.BLOCK_M), n_texts, hq)
    fk.flash_varlen_fwd_kernel[grid](
        q, k, v, o, lse, cu_seqlens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1),
        total, hq // hkv, scale * LOG2E, p, key, off,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M=t.BLOCK_M, BLOCK_N=t.BLOCK_N,
        CAUSAL=bool(causal), DROPOUT=dropout, DOT_PREC=_dot_precision(q.dtype),
        num_warps=t.fwd_warps, num_stages=t.fwd_stages,
    )  # fmt: skip
    return o, lse


def flash_varlen_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    opts: Varlen,
    tiles: FlashTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launch: ``(dq [T, Hq, D], dk [T, Hkv, D], dv [T, Hkv, D])`` in q's dtype.

    ``o`` and ``lse`` are what :func:`flash_varlen_fwd` returned for the same ``opts`` (the
    dropout mask is regenerated from their seed and offset); ``do`` is ``[T, Hq, D]``.
    """
    cu_seqlens, max_seqlen, causal = opts.cu_seqlens, opts.longest(), opts.causal
    p, key, off, dropout = dropout_args(opts.dropout_p, opts.seed, opts.offset)
    q, k, v, o, do = last_dim_contiguous(q, k, v, o, do)
    total, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = opts.scale(d)
    t = tiles or flash_varlen_tiles(d, q.dtype, dropout)
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    n_texts = cu_seqlens.numel() - 1
    if total == 0 or n_texts == 0 or max_seqlen <= 0:
        return dq, dk, dv
    delta = torch.empty((hq, total), dtype=torch.float32, device=q.device)
    fk.flash_varlen_bwd_preprocess[(triton.cdiv(total, t.PRE_BLOCK), hq)](
        o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1), total,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK=t.PRE_BLOCK,
    )  # fmt: skip
    prec = _dot_precision(q.dtype)
    common = (
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1),
    )  # fmt: skip
    fk.flash_varlen_bwd_dkdv_kernel[(triton.cdiv(max_seqlen, t.BLOCK_N1), n_texts, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, *common,
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        total, group, scale, scale * LOG2E, p, key, off,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M1=t.BLOCK_M1, BLOCK_N1=t.BLOCK_N1,
        CAUSAL=bool(causal), DROPOUT=dropout, DOT_PREC=prec,
        num_warps=t.dkdv_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    fk.flash_varlen_bwd_dq_kernel[(triton.cdiv(max_seqlen, t.BLOCK_M2), n_texts, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, *common,
        dq.stride(0), dq.stride(1),
        total, group, scale, scale * LOG2E, p, key, off,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M2=t.BLOCK_M2, BLOCK_N2=t.BLOCK_N2,
        CAUSAL=bool(causal), DROPOUT=dropout, DOT_PREC=prec,
        num_warps=t.dq_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    return dq, dk, dv
