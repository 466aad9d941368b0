"""Varlen (packed) flash attention in Triton: forward and backward over texts laid back to back.

The flash-attention-2 algorithm of Triton's fused-attention tutorial
(``python/tutorials/06-fused-attention.py``), recast for the packed layout of
:mod:`llm2vec_fast.kernels.attention` (the flash-attention varlen convention)::

    q           [T, Hq, D]      float16 / bfloat16 (float32 for tests)
    k, v        [T, Hkv, D]     same dtype; Hq % Hkv == 0 (GQA: query head h reads kv head
                                h // (Hq // Hkv), no K/V copies)
    cu_seqlens  [n_texts + 1]   int32, cu_seqlens[0] == 0, cu_seqlens[-1] == T (zero-length texts
                                allowed: they own no rows)
    max_seqlen  int             the longest text (sizes the grid)
    o           [T, Hq, D]      q's dtype
    lse         [Hq, T]         float32, natural-log logsumexp of each row of ``q k^T * scale``

A query attends to the keys of its own text only (and only keys j <= i when ``causal``).
Each program owns a BLOCK_M tile of one text's queries of one head, so no program ever touches a
token of another text and nothing is padded. Softmax runs online in float32 with ``exp2`` and a
log2(e)-prescaled scale. The backward recomputes P from the saved LSE: a preprocess kernel forms
``delta = rowsum(dO * O)``, one kernel accumulates dK/dV (a program owns one key block of one kv
head and loops over the query heads of its group, so the GQA sum needs no atomics), one kernel
accumulates dQ.

Head dims 64, 80, 96, 128 and 256 run at their real tile sizes (:func:`flash_varlen_tiles`);
any D <= 256 works (BLOCK_D is D rounded up to a power of two, >= 16, with masked loads). The
last dim of q/k/v/o must have stride 1; token and head strides are free (views of a fused QKV
projection need no copy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ._launch import HAVE_TRITON, next_pow2
from .attention import check_qkv

if HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the module still imports; the launchers raise
    triton = None
    tl = None

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


def flash_varlen_tiles(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> FlashTiles:
    """Tile sizes for ``head_dim`` (the H100 configs; checked by the sm_90 compile test).

    16-bit dtypes are the tuned path. float32 keeps the blocks and drops to one pipeline stage
    so shared memory fits: it is for the interpreter and for correctness, not speed (on sm_90 its
    IEEE dots run without tensor cores and its registers spill heavily).
    """
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    bd = max(16, next_pow2(head_dim))
    # Chosen from sm_90 compiles (tests/test_kernels_sm90_attention.py): no spills, registers
    # <= ~250, shared memory well under 227 KB. Block dims of 16/32 with 8 warps fall back from
    # wgmma to mma.sync (D=256 backward), which keeps the fp32 accumulators out of local memory.
    if bd <= 64:
        t = FlashTiles(bd, 128, 64, 8, 3, 32, 64, 4, 64, 32, 4, 3)
    elif bd <= 128:
        t = FlashTiles(bd, 128, 64, 8, 3, 32, 64, 8, 64, 32, 4, 2)
    else:
        t = FlashTiles(bd, 128, 32, 8, 2, 16, 32, 8, 32, 16, 8, 1)
    if dtype == torch.float32:
        t = replace(t, fwd_stages=1, bwd_stages=1)
    return t


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _flash_varlen_fwd_kernel(
        Q, K, V, O, LSE, CU,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
        total_tokens, group, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """One BLOCK_M tile of one text's queries of one query head.

        qk_scale = softmax_scale * log2(e): scores live in the log2 domain inside the kernel.
        """
        pid_m = tl.program_id(0)
        text = tl.program_id(1)
        h = tl.program_id(2)
        start = tl.load(CU + text)
        seqlen = tl.load(CU + text + 1) - start
        m0 = pid_m * BLOCK_M
        if m0 < seqlen:
            hk = h // group
            offs_m = m0 + tl.arange(0, BLOCK_M)
            offs_n = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, BLOCK_D)
            row0 = start.to(tl.int64)
            m_ok = offs_m < seqlen
            d_ok = offs_d < HEAD_DIM

            q_ptrs = Q + (row0 + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :]
            q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            # K loaded transposed: [BLOCK_D, BLOCK_N]
            kt_ptrs = K + (row0 + offs_n[None, :]) * stride_kt + hk * stride_kh + offs_d[:, None]
            v_ptrs = V + (row0 + offs_n[:, None]) * stride_vt + hk * stride_vh + offs_d[None, :]

            m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

            if CAUSAL:
                hi = tl.minimum(seqlen, m0 + BLOCK_M)
            else:
                hi = seqlen
            for n0 in range(0, hi, BLOCK_N):
                n_ok = (n0 + offs_n) < seqlen
                kt = tl.load(
                    kt_ptrs + n0 * stride_kt, mask=d_ok[:, None] & n_ok[None, :], other=0.0
                )
                qk = tl.dot(q, kt, input_precision=DOT_PREC)
                keep = n_ok[None, :]
                if CAUSAL:
                    keep = keep & (offs_m[:, None] >= (n0 + offs_n)[None, :])
                qk = tl.where(keep, qk * qk_scale, float("-inf"))
                # the first block holds key 0, which every row may see: m_ij is finite
                m_ij = tl.maximum(m_i, tl.max(qk, 1))
                p = tl.math.exp2(qk - m_ij[:, None])
                alpha = tl.math.exp2(m_i - m_ij)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None]
                v = tl.load(v_ptrs + n0 * stride_vt, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
                m_i = m_ij

            acc = acc / l_i[:, None]
            # natural-log LSE of the unscaled-domain scores: (m + log2 l) * ln 2
            lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
            tl.store(LSE + h.to(tl.int64) * total_tokens + row0 + offs_m, lse, mask=m_ok)
            o_ptrs = O + (row0 + offs_m[:, None]) * stride_ot + h * stride_oh + offs_d[None, :]
            tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _flash_varlen_bwd_preprocess(
        O, DO, DELTA,
        stride_ot, stride_oh, stride_dot, stride_doh,
        total_tokens,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """delta[h, t] = sum_d dO[t, h, d] * O[t, h, d] in float32; DELTA is [Hq, T]."""
        offs_t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        h = tl.program_id(1)
        offs_d = tl.arange(0, BLOCK_D)
        t_ok = offs_t < total_tokens
        mask = t_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
        rows = offs_t.to(tl.int64)[:, None]
        o = tl.load(O + rows * stride_ot + h * stride_oh + offs_d[None, :], mask=mask, other=0.0)
        do = tl.load(
            DO + rows * stride_dot + h * stride_doh + offs_d[None, :], mask=mask, other=0.0
        )
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        tl.store(DELTA + h.to(tl.int64) * total_tokens + offs_t, delta, mask=t_ok)

    @triton.jit
    def _flash_varlen_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, CU,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
        total_tokens, group, sm_scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
        CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """dK, dV of one BLOCK_N1 key block of one kv head, summed over the query heads of its
        group and the query blocks of its text (GQA without atomics)."""
        pid_n = tl.program_id(0)
        text = tl.program_id(1)
        hk = tl.program_id(2)
        start = tl.load(CU + text)
        seqlen = tl.load(CU + text + 1) - start
        n0 = pid_n * BLOCK_N1
        if n0 < seqlen:
            row0 = start.to(tl.int64)
            offs_n = n0 + tl.arange(0, BLOCK_N1)
            offs_m = tl.arange(0, BLOCK_M1)
            offs_d = tl.arange(0, BLOCK_D)
            n_ok = offs_n < seqlen
            d_ok = offs_d < HEAD_DIM
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(
                K + (row0 + offs_n[:, None]) * stride_kt + hk * stride_kh + offs_d[None, :],
                mask=kv_mask, other=0.0,
            )  # fmt: skip
            v = tl.load(
                V + (row0 + offs_n[:, None]) * stride_vt + hk * stride_vh + offs_d[None, :],
                mask=kv_mask, other=0.0,
            )  # fmt: skip
            dk = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
            dv = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
            if CAUSAL:
                lo = (n0 // BLOCK_M1) * BLOCK_M1  # queries before the key block see none of it
            else:
                lo = 0
            for g in range(0, group):
                h = hk * group + g
                # Q and dO loaded transposed: [BLOCK_D, BLOCK_M1]
                qt_base = Q + (row0 + offs_m[None, :]) * stride_qt + h * stride_qh + offs_d[:, None]
                do_base = (
                    DO + (row0 + offs_m[:, None]) * stride_dot + h * stride_doh + offs_d[None, :]
                )
                lse_base = LSE + h.to(tl.int64) * total_tokens + row0 + offs_m
                delta_base = DELTA + h.to(tl.int64) * total_tokens + row0 + offs_m
                for m0 in range(lo, seqlen, BLOCK_M1):
                    m_ok = (m0 + offs_m) < seqlen
                    qt = tl.load(
                        qt_base + m0 * stride_qt, mask=d_ok[:, None] & m_ok[None, :], other=0.0
                    )
                    lse2 = tl.load(lse_base + m0, mask=m_ok, other=0.0) * 1.4426950408889634
                    qkt = tl.dot(k, qt, input_precision=DOT_PREC)  # [BLOCK_N1, BLOCK_M1]
                    pt = tl.math.exp2(qkt * qk_scale - lse2[None, :])
                    keep = m_ok[None, :]
                    if CAUSAL:
                        keep = keep & ((m0 + offs_m)[None, :] >= offs_n[:, None])
                    pt = tl.where(keep, pt, 0.0)
                    do = tl.load(
                        do_base + m0 * stride_dot, mask=m_ok[:, None] & d_ok[None, :], other=0.0
                    )
                    dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PREC)
                    di = tl.load(delta_base + m0, mask=m_ok, other=0.0)
                    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                    dst = pt * (dpt - di[None, :])
                    dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
            dk = dk * sm_scale
            tl.store(
                DK + (row0 + offs_n[:, None]) * stride_dkt + hk * stride_dkh + offs_d[None, :],
                dk.to(DK.dtype.element_ty), mask=kv_mask,
            )  # fmt: skip
            tl.store(
                DV + (row0 + offs_n[:, None]) * stride_dvt + hk * stride_dvh + offs_d[None, :],
                dv.to(DV.dtype.element_ty), mask=kv_mask,
            )  # fmt: skip

    @triton.jit
    def _flash_varlen_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, CU,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_dot, stride_doh, stride_dqt, stride_dqh,
        total_tokens, group, sm_scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
        CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """dQ of one BLOCK_M2 query block of one query head, over the key blocks of its text."""
        pid_m = tl.program_id(0)
        text = tl.program_id(1)
        h = tl.program_id(2)
        start = tl.load(CU + text)
        seqlen = tl.load(CU + text + 1) - start
        m0 = pid_m * BLOCK_M2
        if m0 < seqlen:
            hk = h // group
            row0 = start.to(tl.int64)
            offs_m = m0 + tl.arange(0, BLOCK_M2)
            offs_n = tl.arange(0, BLOCK_N2)
            offs_d = tl.arange(0, BLOCK_D)
            m_ok = offs_m < seqlen
            d_ok = offs_d < HEAD_DIM
            q_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(
                Q + (row0 + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :],
                mask=q_mask, other=0.0,
            )  # fmt: skip
            do = tl.load(
                DO + (row0 + offs_m[:, None]) * stride_dot + h * stride_doh + offs_d[None, :],
                mask=q_mask, other=0.0,
            )  # fmt: skip
            lse2 = tl.load(
                LSE + h.to(tl.int64) * total_tokens + row0 + offs_m, mask=m_ok, other=0.0
            )
            lse2 = lse2 * 1.4426950408889634
            di = tl.load(
                DELTA + h.to(tl.int64) * total_tokens + row0 + offs_m, mask=m_ok, other=0.0
            )
            dq = tl.zeros([BLOCK_M2, BLOCK_D], dtype=tl.float32)
            # K, V loaded transposed: [BLOCK_D, BLOCK_N2]
            kt_ptrs = K + (row0 + offs_n[None, :]) * stride_kt + hk * stride_kh + offs_d[:, None]
            vt_ptrs = V + (row0 + offs_n[None, :]) * stride_vt + hk * stride_vh + offs_d[:, None]
            if CAUSAL:
                hi = tl.minimum(seqlen, m0 + BLOCK_M2)
            else:
                hi = seqlen
            for n0 in range(0, hi, BLOCK_N2):
                n_ok = (n0 + offs_n) < seqlen
                kv_mask = d_ok[:, None] & n_ok[None, :]
                kt = tl.load(kt_ptrs + n0 * stride_kt, mask=kv_mask, other=0.0)
                vt = tl.load(vt_ptrs + n0 * stride_vt, mask=kv_mask, other=0.0)
                qk = tl.dot(q, kt, input_precision=DOT_PREC)
                p = tl.math.exp2(qk * qk_scale - lse2[:, None])
                keep = n_ok[None, :]
                if CAUSAL:
                    keep = keep & (offs_m[:, None] >= (n0 + offs_n)[None, :])
                p = tl.where(keep, p, 0.0)
                dp = tl.dot(do, vt, input_precision=DOT_PREC)
                ds = p * (dp - di[:, None])
                dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
            dq = dq * sm_scale
            tl.store(
                DQ + (row0 + offs_m[:, None]) * stride_dqt + h * stride_dqh + offs_d[None, :],
                dq.to(DQ.dtype.element_ty), mask=q_mask,
            )  # fmt: skip


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


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 tl.dot would run TF32 on the GPU; "ieee" keeps float32 exact (ignored for 16-bit)
    return "ieee"


def flash_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    tiles: FlashTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch. Returns ``(o [T, Hq, D] q.dtype, lse [Hq, T] float32, natural log)``.

    ``tiles`` overrides :func:`flash_varlen_tiles` (tests use small tiles to exercise loops).
    """
    _check_inputs(q, k, v, cu_seqlens)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    total, hq, d = q.shape
    hkv = k.shape[1]
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    t = tiles or flash_varlen_tiles(d, q.dtype)
    if t.BLOCK_D < d:
        raise ValueError(f"tiles.BLOCK_D {t.BLOCK_D} < head_dim {d}")
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((hq, total), dtype=torch.float32, device=q.device)
    n_texts = cu_seqlens.numel() - 1
    if total == 0 or n_texts == 0 or max_seqlen <= 0:
        return o, lse
    grid = (triton.cdiv(max_seqlen, t.BLOCK_M), n_texts, hq)
    _flash_varlen_fwd_kernel[grid](
        q, k, v, o, lse, cu_seqlens,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1),
        total, hq // hkv, scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M=t.BLOCK_M, BLOCK_N=t.BLOCK_N,
        CAUSAL=bool(causal), DOT_PREC=_dot_precision(q.dtype),
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
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    tiles: FlashTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launch: ``(dq [T, Hq, D], dk [T, Hkv, D], dv [T, Hkv, D])`` in q's dtype.

    ``o`` and ``lse`` are what :func:`flash_varlen_fwd` returned; ``do`` is ``[T, Hq, D]``.
    """
    q, k, v, o, do = (_last_dim_contiguous(t) for t in (q, k, v, o, do))
    total, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    t = tiles or flash_varlen_tiles(d, q.dtype)
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    n_texts = cu_seqlens.numel() - 1
    if total == 0 or n_texts == 0 or max_seqlen <= 0:
        return dq, dk, dv
    delta = torch.empty((hq, total), dtype=torch.float32, device=q.device)
    _flash_varlen_bwd_preprocess[(triton.cdiv(total, t.PRE_BLOCK), hq)](
        o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1), total,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK=t.PRE_BLOCK,
    )  # fmt: skip
    prec = _dot_precision(q.dtype)
    common = (
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1),
    )  # fmt: skip
    _flash_varlen_bwd_dkdv_kernel[(triton.cdiv(max_seqlen, t.BLOCK_N1), n_texts, hkv)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, *common,
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        total, group, scale, scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M1=t.BLOCK_M1, BLOCK_N1=t.BLOCK_N1,
        CAUSAL=bool(causal), DOT_PREC=prec, num_warps=t.dkdv_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    _flash_varlen_bwd_dq_kernel[(triton.cdiv(max_seqlen, t.BLOCK_M2), n_texts, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, *common,
        dq.stride(0), dq.stride(1),
        total, group, scale, scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M2=t.BLOCK_M2, BLOCK_N2=t.BLOCK_N2,
        CAUSAL=bool(causal), DOT_PREC=prec, num_warps=t.dq_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    return dq, dk, dv


class FlashVarlenFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves (q, k, v, o, lse); backward recomputes P from lse."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, tiles=None):
        o, lse = flash_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, tiles)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.max_seqlen, ctx.causal, ctx.softmax_scale, ctx.tiles = (
            max_seqlen,
            causal,
            softmax_scale,
            tiles,
        )
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = flash_varlen_bwd(
            do, q, k, v, o, lse, cu_seqlens, ctx.max_seqlen, ctx.causal, ctx.softmax_scale,
            ctx.tiles,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None, None


def flash_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Flash attention over packed texts (Triton; CUDA tensors, or CPU under TRITON_INTERPRET=1).

    Supports grouped-query / multi-query attention: K, V may have fewer heads than Q, Hq a
    multiple of Hkv; query heads ``[g * Hq/Hkv, (g + 1) * Hq/Hkv)`` read kv head ``g``.

    Arguments:
        q: ``[total_tokens, Hq, D]``, float16 / bfloat16 (float32 works, for tests), D <= 256.
            The last dim must have stride 1 (copied otherwise); token/head strides are free.
        k: ``[total_tokens, Hkv, D]``, q's dtype.
        v: ``[total_tokens, Hkv, D]``, q's dtype.
        cu_seqlens: ``[n_texts + 1]`` int32 on q's device, the cumulative text lengths
            (``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == total_tokens``); texts may be empty.
        max_seqlen: int, the longest text (at least it: the grid is sized by it).
        causal: whether token i sees only tokens j <= i of its text (False: bidirectional,
            LLM2Vec's attention).
        softmax_scale: float, the scaling of ``q k^T`` before softmax; default ``D ** -0.5``.

    Returns:
        out: ``[total_tokens, Hq, D]`` in q's dtype. Differentiable in q, k, v (dk/dv are summed
        over each GQA group inside the kernel). The forward's LSE (``[Hq, total_tokens]``
        float32, natural log) is kept for the backward; :func:`flash_varlen_fwd` returns it.
    """
    return FlashVarlenFunction.apply(q, k, v, cu_seqlens, int(max_seqlen), causal, softmax_scale)
