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

Dropout on the attention probabilities (``dropout_p > 0``; SimCSE trains with 0.3) follows HF and
torch: ``out = dropout(softmax(S)) @ V``, each probability dropped with probability ``dropout_p``
and the kept ones scaled by ``1 / (1 - dropout_p)``; the row max and LSE come from the undropped
scores. The mask is never stored: :func:`_dropout_keep` draws it from Philox-4x32 keyed by the
seed, at the counter (key // 8, packed query row, query head, offset), so it is a function of
(seed, offset, head, query token, key) only, not of the tiling, and the backward kernels
regenerate exactly the forward's mask. With ``Z = keep / (1 - p)``: ``dV = (Z * P)^T dO``,
``dS = P * (Z * (dO V^T) - delta)``, and ``delta = rowsum(dO * O)`` still equals
``rowsum(P * Z * (dO V^T))`` because ``O = (Z * P) V``. ``DROPOUT`` is a constexpr: compiled
without it, the kernels hold no dropout code (on sm_90: the registers and shared memory they had
before dropout existed, and no Philox instructions).

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
_MASK64 = (1 << 64) - 1


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
    head_dim: int, dtype: torch.dtype = torch.bfloat16, dropout: bool = False
) -> FlashTiles:
    """Tile sizes for ``head_dim`` (the H100 configs; checked by the sm_90 compile tests).

    16-bit dtypes are the tuned path. float32 keeps the blocks and drops to one pipeline stage
    so shared memory fits: it is for the interpreter and for correctness, not speed (on sm_90 its
    IEEE dots run without tensor cores and its registers spill heavily). ``dropout``: the
    kernels compiled with dropout (the mask does not depend on the tiles); at head dims above 128
    the forward takes 16-key blocks, where 32 spills (tests/test_kernels_sm90_attention_dropout.py).
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
    if dropout and bd > 128:
        t = replace(t, BLOCK_N=16)
    if dtype == torch.float32:
        t = replace(t, fwd_stages=1, bwd_stages=1)
    return t


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _dropout_keep(
        seed, offset, h, rows, n0, dropout_p, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
    ):
        """Keep mask ``[BLOCK_R, BLOCK_C]`` (int1) of query head ``h``: query rows ``rows``
        (``[BLOCK_R]`` int32, packed token indices) against keys ``n0 .. n0 + BLOCK_C - 1``
        (indices inside the text; ``n0`` and ``BLOCK_C`` multiples of 8).

        One Philox-4x32 call (7 rounds, as flash-attention's CUDA dropout) keyed by ``seed`` at
        the counter ``(key // 8, row, h, offset)`` gives 128 bits for 8 adjacent keys: key j
        takes 16-bit half ``j % 2`` of word ``(j % 8) // 2``, and is kept when that half is
        >= ``ceil(dropout_p * 2**16)`` (kept with probability 1 - dropout_p, to 2**-16). Every
        (seed, offset, head, row, key) gets its own bits, whatever the tiling.
        """
        G: tl.constexpr = BLOCK_C // 8
        z = tl.zeros([BLOCK_R, G], dtype=tl.int32)
        c0 = z + (n0 // 8 + tl.arange(0, G))[None, :]
        c1 = z + rows[:, None]
        c2 = z + h
        c3 = z + offset.to(tl.int32)
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3, 7)
        # interleave: column 8 c + 2 w + b <- half b of word w of group c (each join adds the
        # innermost index, so the first join picks the word's high bit)
        lo0 = tl.join(r0 & 0xFFFF, r2 & 0xFFFF)
        lo1 = tl.join(r1 & 0xFFFF, r3 & 0xFFFF)
        hi0 = tl.join(r0 >> 16, r2 >> 16)
        hi1 = tl.join(r1 >> 16, r3 >> 16)
        r = tl.reshape(tl.join(tl.join(lo0, lo1), tl.join(hi0, hi1)), [BLOCK_R, BLOCK_C])
        return r >= tl.math.ceil(dropout_p * 65536.0).to(tl.uint32)

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _dropout_mask_kernel(
        MASK, CU, total_tokens, max_seqlen, dropout_p, seed, offset,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """MASK[h, t, j] (int8, ``[Hq, T, max_seqlen]``) = 1 where query token t of head h keeps
        its probability of key j of its text; entries past the text's length are not written."""
        pid_m = tl.program_id(0)
        text = tl.program_id(1)
        h = tl.program_id(2)
        start = tl.load(CU + text)
        seqlen = tl.load(CU + text + 1) - start
        m0 = pid_m * BLOCK_M
        if m0 < seqlen:
            offs_m = m0 + tl.arange(0, BLOCK_M)
            offs_n = tl.arange(0, BLOCK_N)
            rows = start + offs_m
            base = MASK + (h.to(tl.int64) * total_tokens + rows.to(tl.int64)[:, None]) * max_seqlen
            for n0 in range(0, seqlen, BLOCK_N):
                keep = _dropout_keep(seed, offset, h, rows, n0, dropout_p, BLOCK_M, BLOCK_N)
                ok = (offs_m < seqlen)[:, None] & ((n0 + offs_n) < seqlen)[None, :]
                tl.store(base + (n0 + offs_n)[None, :], keep.to(tl.int8), mask=ok)

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _flash_varlen_fwd_kernel(
        Q, K, V, O, LSE, CU,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
        total_tokens, group, qk_scale, dropout_p, seed, offset,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """One BLOCK_M tile of one text's queries of one query head.

        qk_scale = softmax_scale * log2(e): scores live in the log2 domain inside the kernel.
        DROPOUT: drop P (after the softmax statistics) by :func:`_dropout_keep`'s mask and
        scale the output by 1 / (1 - dropout_p).
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
                if DROPOUT:
                    keep = _dropout_keep(
                        seed, offset, h, start + offs_m, n0, dropout_p, BLOCK_M, BLOCK_N
                    )
                    p = tl.where(keep, p, 0.0)
                v = tl.load(v_ptrs + n0 * stride_vt, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
                m_i = m_ij

            if DROPOUT:
                acc = acc * ((1.0 / (1.0 - dropout_p)) / l_i)[:, None]
            else:
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

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _flash_varlen_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, CU,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
        total_tokens, group, sm_scale, qk_scale, dropout_p, seed, offset,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
        CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """dK, dV of one BLOCK_N1 key block of one kv head, summed over the query heads of its
        group and the query blocks of its text (GQA without atomics). DROPOUT: the forward's
        mask regenerated; dV takes the dropped, rescaled P, dS the masked, rescaled dO V^T."""
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
                    if DROPOUT:
                        keep = tl.trans(
                            _dropout_keep(
                                seed, offset, h, start + m0 + offs_m, n0, dropout_p,
                                BLOCK_M1, BLOCK_N1,
                            )
                        )  # fmt: skip
                        inv_keep = 1.0 / (1.0 - dropout_p)
                        pdt = tl.where(keep, pt * inv_keep, 0.0)
                        dv = tl.dot(pdt.to(do.dtype), do, dv, input_precision=DOT_PREC)
                    else:
                        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PREC)
                    di = tl.load(delta_base + m0, mask=m_ok, other=0.0)
                    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                    if DROPOUT:
                        dpt = tl.where(keep, dpt * inv_keep, 0.0)
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

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _flash_varlen_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, CU,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_dot, stride_doh, stride_dqt, stride_dqh,
        total_tokens, group, sm_scale, qk_scale, dropout_p, seed, offset,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
        CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """dQ of one BLOCK_M2 query block of one query head, over the key blocks of its text.
        DROPOUT: dS takes dO V^T masked by the forward's (regenerated) mask and rescaled."""
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
                if DROPOUT:
                    keep = _dropout_keep(
                        seed, offset, h, start + offs_m, n0, dropout_p, BLOCK_M2, BLOCK_N2
                    )
                    dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
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


# --------------------------------------------------------------------------------------------
# Dropout seeds
# --------------------------------------------------------------------------------------------

# the kernels' seed argument when dropout is off (unused; an int64 like every real key)
_NO_KEY = 1 << 32


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _philox_key(seed: int) -> int:
    """The kernels' Philox key for ``seed``: its 64 bits hashed (splitmix64), bit 63 cleared and
    bit 32 set, so Triton always passes it as an int64 (small and large seeds share one
    compiled kernel)."""
    return (_splitmix64(int(seed) & _MASK64) & ((1 << 63) - 1)) | (1 << 32)


def _dropout_args(dropout_p: float, seed: int | None, offset: int) -> tuple[float, int, int, bool]:
    """(dropout_p, Philox key, offset as a signed 32-bit pattern, DROPOUT) for the kernels."""
    p = float(dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if p == 0.0:
        return 0.0, _NO_KEY, 0, False
    if seed is None:
        raise ValueError("dropout_p > 0 needs a seed (flash_varlen_attention draws one)")
    offset = int(offset)
    if not 0 <= offset < 1 << 32:
        raise ValueError(f"offset must be in [0, 2**32), got {offset}")
    # always an int32 argument: one compiled kernel for every offset
    return p, _philox_key(seed), offset - (1 << 32) if offset >= 1 << 31 else offset, True


def draw_dropout_seed(device: torch.device | str) -> int:
    """A fresh dropout seed (an int in [0, 2**63)) from torch's default generator of ``device``.

    CUDA: a hash of the generator's (initial seed, Philox offset), whose offset is then advanced,
    the way torch's own CUDA dropout consumes it: no host-device sync, and ``torch.manual_seed``
    or a restored RNG state (gradient checkpointing) gives the same seed again. Other devices:
    ``torch.randint`` on the device's default generator.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gen = torch.cuda.default_generators[index]
        try:
            base, off = gen.initial_seed(), gen.get_offset()
            gen.set_offset(off + 4)
            return _splitmix64(base ^ _splitmix64(off)) & ((1 << 63) - 1)
        except (AttributeError, RuntimeError):  # pragma: no cover - older torch
            pass
    return int(torch.randint(0, 1 << 62, (), dtype=torch.int64, device=device).item())


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
    p, key, off, on = _dropout_args(dropout_p, seed, offset)
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
        _dropout_mask_kernel[grid](
            mask, cu_seqlens, total, max_seqlen, p, key, off, BLOCK_M=32, BLOCK_N=32
        )
    return mask.bool()


def flash_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    tiles: FlashTiles | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launch. Returns ``(o [T, Hq, D] q.dtype, lse [Hq, T] float32, natural log)``.

    ``tiles`` overrides :func:`flash_varlen_tiles` (tests use small tiles to exercise loops).
    ``dropout_p > 0`` needs ``seed`` (an int) and takes ``offset`` (an int in [0, 2**32)); the
    LSE is the undropped softmax's.
    """
    _check_inputs(q, k, v, cu_seqlens)
    p, key, off, dropout = _dropout_args(dropout_p, seed, offset)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    total, hq, d = q.shape
    hkv = k.shape[1]
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    t = tiles or flash_varlen_tiles(d, q.dtype, dropout)
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
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    tiles: FlashTiles | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launch: ``(dq [T, Hq, D], dk [T, Hkv, D], dv [T, Hkv, D])`` in q's dtype.

    ``o`` and ``lse`` are what :func:`flash_varlen_fwd` returned; ``do`` is ``[T, Hq, D]``;
    ``dropout_p``, ``seed``, ``offset`` must be the forward's (the mask is regenerated).
    """
    p, key, off, dropout = _dropout_args(dropout_p, seed, offset)
    q, k, v, o, do = (_last_dim_contiguous(t) for t in (q, k, v, o, do))
    total, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    t = tiles or flash_varlen_tiles(d, q.dtype, dropout)
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
        total, group, scale, scale * LOG2E, p, key, off,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M1=t.BLOCK_M1, BLOCK_N1=t.BLOCK_N1,
        CAUSAL=bool(causal), DROPOUT=dropout, DOT_PREC=prec,
        num_warps=t.dkdv_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    _flash_varlen_bwd_dq_kernel[(triton.cdiv(max_seqlen, t.BLOCK_M2), n_texts, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, *common,
        dq.stride(0), dq.stride(1),
        total, group, scale, scale * LOG2E, p, key, off,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M2=t.BLOCK_M2, BLOCK_N2=t.BLOCK_N2,
        CAUSAL=bool(causal), DROPOUT=dropout, DOT_PREC=prec,
        num_warps=t.dq_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    return dq, dk, dv


class FlashVarlenFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves (q, k, v, o, lse) and the dropout seed; backward
    recomputes P from lse (and the dropout mask from the seed).

    ``apply(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, tiles=None, dropout_p=0.0,
    seed=None, offset=0)``; with ``dropout_p > 0`` and no seed, the forward draws one
    (:func:`draw_dropout_seed`).
    """

    @staticmethod
    def forward(
        ctx, q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, tiles=None, dropout_p=0.0,
        seed=None, offset=0,
    ):  # fmt: skip
        if dropout_p > 0.0 and seed is None:
            seed = draw_dropout_seed(q.device)
        o, lse = flash_varlen_fwd(
            q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, tiles, dropout_p, seed,
            offset,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.args = (max_seqlen, causal, softmax_scale, tiles, dropout_p, seed, offset)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = flash_varlen_bwd(do, q, k, v, o, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None, None, None


def flash_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = False,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
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
        dropout_p: float in [0, 1), dropout on the attention probabilities:
            ``out = dropout(softmax(q k^T * scale)) @ v``, kept probabilities scaled by
            ``1 / (1 - dropout_p)`` (as torch and HF do in training). 0 runs the kernels
            compiled without dropout.
        seed: int (taken modulo 2**64), the dropout mask's seed; None (the default) draws one
            from torch's default generator on q's device per call (:func:`draw_dropout_seed`),
            so ``torch.manual_seed`` makes it reproducible and gradient checkpointing, which
            restores the RNG state, replays the same mask. The backward regenerates the mask
            from it.
        offset: int in [0, 2**32), a stream index under ``seed``: other offsets give
            independent masks.

    The mask of ``(dropout_p, seed, offset)`` is :func:`flash_varlen_dropout_mask`.

    Returns:
        out: ``[total_tokens, Hq, D]`` in q's dtype. Differentiable in q, k, v (dk/dv are summed
        over each GQA group inside the kernel). The forward's LSE (``[Hq, total_tokens]``
        float32, natural log) is kept for the backward; :func:`flash_varlen_fwd` returns it.
    """
    return FlashVarlenFunction.apply(
        q, k, v, cu_seqlens, int(max_seqlen), causal, softmax_scale, None, float(dropout_p), seed,
        int(offset),
    )  # fmt: skip
