"""The Triton kernels of varlen (packed) flash attention: forward, backward and the dropout mask.

The flash-attention-2 algorithm of Triton's fused-attention tutorial
(``python/tutorials/06-fused-attention.py``), recast for the packed layout (the flash-attention
varlen convention; shapes and launchers in :mod:`llm2vec_fast.kernels.flash_varlen`)::

    q, o        [T, Hq, D]      k, v  [T, Hkv, D]      lse, delta  [Hq, T] float32
    cu_seqlens  [n_texts + 1]   int32 text boundaries

A query attends to the keys of its own text only (and only keys j <= i when ``CAUSAL``).
Each program owns a BLOCK_M tile of one text's queries of one head, so no program ever touches a
token of another text and nothing is padded. Softmax runs online in float32 with ``exp2`` and a
log2(e)-prescaled scale. The backward recomputes P from the saved LSE: a preprocess kernel forms
``delta = rowsum(dO * O)``, one kernel accumulates dK/dV (a program owns one key block of one kv
head and loops over the query heads of its group, so the GQA sum needs no atomics), one kernel
accumulates dQ.

Dropout on the attention probabilities (``DROPOUT``; SimCSE trains with 0.3) follows HF and
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
"""

from __future__ import annotations

from ._launch import HAVE_TRITON

if HAVE_TRITON:
    import triton
    import triton.language as tl

    # ---- shared by the kernels (triton inlines these): the packed layout, the masks, the grid ----

    @triton.jit
    def _this_block(CU, BLOCK: tl.constexpr):
        """This program's place in the grid ``(blocks, texts, heads)``: ``(start, seqlen, b0,
        head)``, its text's first packed row and length, the first token (inside the text) of its
        block of ``BLOCK`` tokens, and its head."""
        pid = tl.program_id(0)
        text = tl.program_id(1)
        head = tl.program_id(2)
        start = tl.load(CU + text)
        seqlen = tl.load(CU + text + 1) - start
        return start, seqlen, pid * BLOCK, head

    @triton.jit
    def _block_offsets(
        b0, seqlen, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        """``(offs, ok, offs_d, d_ok)``: the tokens ``b0 .. b0 + BLOCK - 1`` of a text and the
        head dim's columns, each with its mask (inside the text's ``seqlen`` tokens, below
        ``HEAD_DIM``)."""
        offs = b0 + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, BLOCK_D)
        return offs, offs < seqlen, offs_d, offs_d < HEAD_DIM

    @triton.jit
    def _rows(X, row0, offs, stride_t, head, stride_h, offs_d):
        """Pointers ``[len(offs), BLOCK_D]`` to tokens ``row0 + offs`` of head ``head`` of a packed
        ``[T, H, D]`` tensor (token stride ``stride_t``, head stride ``stride_h``)."""
        return X + (row0 + offs[:, None]) * stride_t + head * stride_h + offs_d[None, :]

    @triton.jit
    def _cols(X, row0, offs, stride_t, head, stride_h, offs_d):
        """:func:`_rows` transposed: pointers ``[BLOCK_D, len(offs)]``."""
        return X + (row0 + offs[None, :]) * stride_t + head * stride_h + offs_d[:, None]

    @triton.jit
    def _load_rows(X, row0, offs, ok, stride_t, head, stride_h, offs_d, d_ok):
        """The ``[len(offs), BLOCK_D]`` tile at :func:`_rows`, zero outside the tokens ``ok`` and
        the head dims ``d_ok``."""
        ptrs = _rows(X, row0, offs, stride_t, head, stride_h, offs_d)
        return tl.load(ptrs, mask=ok[:, None] & d_ok[None, :], other=0.0)

    @triton.jit
    def _store_rows(X, x, row0, offs, ok, stride_t, head, stride_h, offs_d, d_ok):
        """Store the tile ``x`` at :func:`_rows`, in ``X``'s dtype, at the tokens ``ok`` and the
        head dims ``d_ok``."""
        ptrs = _rows(X, row0, offs, stride_t, head, stride_h, offs_d)
        tl.store(ptrs, x.to(X.dtype.element_ty), mask=ok[:, None] & d_ok[None, :])

    @triton.jit
    def _row_stats(X, head, total_tokens, row0, offs):
        """Pointers to the float32 per-query statistics (LSE, delta; ``[Hq, T]``) of tokens
        ``row0 + offs`` of query head ``head``."""
        return X + head.to(tl.int64) * total_tokens + row0 + offs

    @triton.jit
    def _visible(ok, q_idx, k_idx, CAUSAL: tl.constexpr):
        """Which scores take part: ``ok`` (the length mask) and, when ``CAUSAL``, keys at or before
        their query (``k_idx <= q_idx``); all broadcast to the tile's shape, either orientation."""
        if CAUSAL:
            ok = ok & (q_idx >= k_idx)
        return ok

    @triton.jit
    def _keys_end(seqlen, m0, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
        """End (exclusive) of the keys that the queries ``m0 .. m0 + BLOCK_M - 1`` of a text of
        ``seqlen`` tokens see: the text's end, or when ``CAUSAL`` the block's last query + 1."""
        hi = seqlen
        if CAUSAL:
            hi = tl.minimum(seqlen, m0 + BLOCK_M)
        return hi

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
    def dropout_mask_kernel(
        MASK, CU, total_tokens, max_seqlen, dropout_p, seed, offset,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """MASK[h, t, j] (int8, ``[Hq, T, max_seqlen]``) = 1 where query token t of head h keeps
        its probability of key j of its text; entries past the text's length are not written."""
        start, seqlen, m0, h = _this_block(CU, BLOCK_M)
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
    def flash_varlen_fwd_kernel(
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
        start, seqlen, m0, h = _this_block(CU, BLOCK_M)
        if m0 < seqlen:
            hk = h // group
            offs_m = m0 + tl.arange(0, BLOCK_M)
            offs_n = tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, BLOCK_D)
            row0 = start.to(tl.int64)
            m_ok = offs_m < seqlen
            d_ok = offs_d < HEAD_DIM

            q = _load_rows(Q, row0, offs_m, m_ok, stride_qt, h, stride_qh, offs_d, d_ok)
            # K loaded transposed: [BLOCK_D, BLOCK_N]
            kt_ptrs = _cols(K, row0, offs_n, stride_kt, hk, stride_kh, offs_d)
            v_ptrs = _rows(V, row0, offs_n, stride_vt, hk, stride_vh, offs_d)

            m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

            for n0 in range(0, _keys_end(seqlen, m0, BLOCK_M, CAUSAL), BLOCK_N):
                n_ok = (n0 + offs_n) < seqlen
                kt = tl.load(
                    kt_ptrs + n0 * stride_kt, mask=d_ok[:, None] & n_ok[None, :], other=0.0
                )
                qk = tl.dot(q, kt, input_precision=DOT_PREC)
                keep = _visible(n_ok[None, :], offs_m[:, None], (n0 + offs_n)[None, :], CAUSAL)
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
            tl.store(_row_stats(LSE, h, total_tokens, row0, offs_m), lse, mask=m_ok)
            _store_rows(O, acc, row0, offs_m, m_ok, stride_ot, h, stride_oh, offs_d, d_ok)

    @triton.jit
    def flash_varlen_bwd_preprocess(
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

    # ---- the backward's tile code, shared by the dK/dV and dQ kernels ----------------------------
    #
    # The two kernels hold the same tile of scores in two orientations: dK/dV keys x queries
    # ([BLOCK_N1, BLOCK_M1], the transpose), dQ queries x keys ([BLOCK_M2, BLOCK_N2]). The helpers
    # take their per-query and per-key operands already broadcast to the tile's shape, so the one
    # code serves both.

    @triton.jit
    def _probs(s, lse2, ok, q_idx, k_idx, qk_scale, CAUSAL: tl.constexpr):
        """P recomputed from the raw scores ``s`` and the log2-domain LSE ``lse2`` (broadcast to
        ``s``'s shape), zero where :func:`_visible` is false."""
        p = tl.math.exp2(s * qk_scale - lse2)
        return tl.where(_visible(ok, q_idx, k_idx, CAUSAL), p, 0.0)

    @triton.jit
    def _dropped(x, keep, dropout_p):
        """``x`` through the dropout: kept entries scaled by ``1 / (1 - dropout_p)``, the others
        zero (``Z * x`` with the module docstring's ``Z``)."""
        return tl.where(keep, x * (1.0 / (1.0 - dropout_p)), 0.0)

    @triton.jit(do_not_specialize=["seed", "offset"])
    def flash_varlen_bwd_dkdv_kernel(
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
        start, seqlen, n0, hk = _this_block(CU, BLOCK_N1)
        if n0 < seqlen:
            row0 = start.to(tl.int64)
            offs_n, n_ok, offs_d, d_ok = _block_offsets(n0, seqlen, BLOCK_N1, HEAD_DIM, BLOCK_D)
            offs_m = tl.arange(0, BLOCK_M1)
            k = _load_rows(K, row0, offs_n, n_ok, stride_kt, hk, stride_kh, offs_d, d_ok)
            v = _load_rows(V, row0, offs_n, n_ok, stride_vt, hk, stride_vh, offs_d, d_ok)
            dk = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
            dv = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
            if CAUSAL:
                lo = (n0 // BLOCK_M1) * BLOCK_M1  # queries before the key block see none of it
            else:
                lo = 0
            for g in range(0, group):
                h = hk * group + g
                # Q loaded transposed: [BLOCK_D, BLOCK_M1]
                qt_base = _cols(Q, row0, offs_m, stride_qt, h, stride_qh, offs_d)
                do_base = _rows(DO, row0, offs_m, stride_dot, h, stride_doh, offs_d)
                lse_base = _row_stats(LSE, h, total_tokens, row0, offs_m)
                delta_base = _row_stats(DELTA, h, total_tokens, row0, offs_m)
                for m0 in range(lo, seqlen, BLOCK_M1):
                    m_ok = (m0 + offs_m) < seqlen
                    qt = tl.load(
                        qt_base + m0 * stride_qt, mask=d_ok[:, None] & m_ok[None, :], other=0.0
                    )
                    lse2 = tl.load(lse_base + m0, mask=m_ok, other=0.0) * 1.4426950408889634
                    qkt = tl.dot(k, qt, input_precision=DOT_PREC)  # [BLOCK_N1, BLOCK_M1]
                    pt = _probs(
                        qkt, lse2[None, :], m_ok[None, :], (m0 + offs_m)[None, :], offs_n[:, None],
                        qk_scale, CAUSAL,
                    )  # fmt: skip
                    do = tl.load(
                        do_base + m0 * stride_dot, mask=m_ok[:, None] & d_ok[None, :], other=0.0
                    )
                    pdt = pt
                    if DROPOUT:
                        keep = tl.trans(
                            _dropout_keep(
                                seed, offset, h, start + m0 + offs_m, n0, dropout_p,
                                BLOCK_M1, BLOCK_N1,
                            )
                        )  # fmt: skip
                        pdt = _dropped(pt, keep, dropout_p)
                    dv = tl.dot(pdt.to(do.dtype), do, dv, input_precision=DOT_PREC)
                    di = tl.load(delta_base + m0, mask=m_ok, other=0.0)
                    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                    if DROPOUT:
                        dpt = _dropped(dpt, keep, dropout_p)
                    dst = pt * (dpt - di[None, :])
                    dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
            dk = dk * sm_scale
            _store_rows(DK, dk, row0, offs_n, n_ok, stride_dkt, hk, stride_dkh, offs_d, d_ok)
            _store_rows(DV, dv, row0, offs_n, n_ok, stride_dvt, hk, stride_dvh, offs_d, d_ok)

    @triton.jit(do_not_specialize=["seed", "offset"])
    def flash_varlen_bwd_dq_kernel(
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
        start, seqlen, m0, h = _this_block(CU, BLOCK_M2)
        if m0 < seqlen:
            hk = h // group
            row0 = start.to(tl.int64)
            offs_m, m_ok, offs_d, d_ok = _block_offsets(m0, seqlen, BLOCK_M2, HEAD_DIM, BLOCK_D)
            offs_n = tl.arange(0, BLOCK_N2)
            q = _load_rows(Q, row0, offs_m, m_ok, stride_qt, h, stride_qh, offs_d, d_ok)
            do = _load_rows(DO, row0, offs_m, m_ok, stride_dot, h, stride_doh, offs_d, d_ok)
            lse2 = tl.load(_row_stats(LSE, h, total_tokens, row0, offs_m), mask=m_ok, other=0.0)
            lse2 = lse2 * 1.4426950408889634
            di = tl.load(_row_stats(DELTA, h, total_tokens, row0, offs_m), mask=m_ok, other=0.0)
            dq = tl.zeros([BLOCK_M2, BLOCK_D], dtype=tl.float32)
            # K, V loaded transposed: [BLOCK_D, BLOCK_N2]
            kt_ptrs = _cols(K, row0, offs_n, stride_kt, hk, stride_kh, offs_d)
            vt_ptrs = _cols(V, row0, offs_n, stride_vt, hk, stride_vh, offs_d)
            for n0 in range(0, _keys_end(seqlen, m0, BLOCK_M2, CAUSAL), BLOCK_N2):
                n_ok = (n0 + offs_n) < seqlen
                kv_mask = d_ok[:, None] & n_ok[None, :]
                kt = tl.load(kt_ptrs + n0 * stride_kt, mask=kv_mask, other=0.0)
                vt = tl.load(vt_ptrs + n0 * stride_vt, mask=kv_mask, other=0.0)
                qk = tl.dot(q, kt, input_precision=DOT_PREC)
                p = _probs(
                    qk, lse2[:, None], n_ok[None, :], offs_m[:, None], (n0 + offs_n)[None, :],
                    qk_scale, CAUSAL,
                )  # fmt: skip
                dp = tl.dot(do, vt, input_precision=DOT_PREC)
                if DROPOUT:
                    keep = _dropout_keep(
                        seed, offset, h, start + offs_m, n0, dropout_p, BLOCK_M2, BLOCK_N2
                    )
                    dp = _dropped(dp, keep, dropout_p)
                ds = p * (dp - di[:, None])
                dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
            dq = dq * sm_scale
            _store_rows(DQ, dq, row0, offs_m, m_ok, stride_dqt, h, stride_dqh, offs_d, d_ok)
