"""Latent attention: every packed token's query against one shared set of latent keys/values.

The attention of NV-Embed's pooling head (``llm2vec_fast.latent_attention.LatentAttentionHead``)::

    q       [T, H, D]   the tokens' queries (T may be 0), float16 / bfloat16 / float32
    k, v    [R, H, D]   the latents' keys and values, the same for every token (R >= 1)
    out     [T, H, D]   softmax(q k^T * scale) v per head, in q's dtype
    lse     [H, T]      float32 natural-log logsumexp of each row of q k^T * scale

No mask and no varlen: each token is an independent query against the same R keys, so a text's
rows never depend on another text's. The last dim of every tensor must have stride 1 (copied
otherwise); token/latent and head strides are free (k and v are views of one fused projection).

The package attribute ``llm2vec_fast.kernels.latent_attention`` is the op (the function of
:mod:`.latent_ops`), not this module: import the module with ``importlib.import_module`` or
``from llm2vec_fast.kernels.latent_attention import ...``.

Paths, chosen by :func:`latent_attention_fwd` / :func:`latent_attention_bwd`:

- Triton (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), D <= 256: the flash
  algorithm. Forward: a program per (BLOCK_M tokens, head) loops over the latents in BLOCK_N
  blocks with an online softmax in float32 (``exp2``, log2(e)-prescaled scale) and writes out and
  lse; the ``[T, H, R]`` scores never reach memory. Backward from the LSE, never rerunning the
  forward: the dQ kernel (a program per token block and head) first forms
  ``delta = rowsum(dO * O)`` for its rows and stores it, then loops over the latents; the dK/dV
  kernel (a program per latent block, head and *token split*) loops over the tokens of its
  split. Splitting T is what makes dK/dV fill the GPU: R = 512 latents are 8 blocks of 64 per
  head, 64 programs for 8 heads on 132 SMs, each walking 16.8k tokens; with splits each program
  takes about ``T / splits`` tokens and writes a float32 partial, summed over splits by one
  ``sum`` (deterministic, no atomics). The number of splits depends only on the shapes.
- PyTorch (anything else, and D > 256): explicit scores in float32 (float64 for float64
  inputs), in token chunks that bound the score memory, and the same backward from the LSE. Wide
  heads stay here on purpose: NV-Embed's head is as wide as the hidden state (D = 4096 with 8
  heads), where the two matmuls (``4 T H R D`` FLOPs) dominate and the ``[T, H, R]`` scores are
  an eighth of Q's size (R / D), so fusing saves little traffic, while one tile of such a head
  would not fit a program's registers or shared memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from ._aot import Sm90Config
from ._launch import HAVE_TRITON, INTERPRET, last_dim_contiguous, use_triton
from .flash_varlen import LOG2E, FlashTiles, flash_varlen_tiles

if HAVE_TRITON:
    import triton
    import triton.language as tl

    # the flash kernels' tile pointers, loads and stores (a row offset of 0: no packed texts)
    from .flash_varlen_kernels import _cols, _load_rows, _rows, _store_rows

__all__ = ["MAX_HEAD_DIM", "LatentTiles", "latent_attention_bwd", "latent_attention_fwd",
           "latent_attention_ref", "latent_attention_tiles", "uses_triton"]  # fmt: skip

MAX_HEAD_DIM = 256  # wider heads take the PyTorch path (module docstring)
DKDV_PROGRAMS = 512  # dK/dV: split the tokens until about this many programs run
MIN_SPLIT_TOKENS = 512  # ... each split at least this many tokens
SCORE_CHUNK = 1 << 25  # PyTorch path: at most this many float32 scores at once (128 MiB)


# ---- tile sizes: one function for the launchers and the sm_90 compile test -------------------


# The flash kernels' tile record, read for these kernels as: fwd ``BLOCK_M`` tokens x ``BLOCK_N``
# latents; dK/dV a ``BLOCK_N1`` latent block over ``BLOCK_M1`` token steps; dQ a ``BLOCK_M2``
# token block over ``BLOCK_N2`` latent steps (``PRE_BLOCK`` unused: the dQ kernel writes delta).
LatentTiles = FlashTiles


def latent_attention_tiles(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> LatentTiles:
    """Tile sizes for ``head_dim`` <= 256: the flash kernels' (:func:`flash_varlen_tiles`, no
    dropout), one table for both, without its 4-warp dK/dV (``fast_dkdv``): on an H200 these
    kernels ran fwd+bwd in 0.63 ms with 8 warps (16.8k tokens x 512 latents, 8 heads, D 128),
    0.86 ms with 4. tests/test_kernels_sm90_latent.py checks these kernels compile with them
    without spills. float32 keeps the blocks with one pipeline stage."""
    return flash_varlen_tiles(head_dim, dtype, fast_dkdv=False)


def dkdv_splits(tokens: int, latents: int, heads: int, tiles: LatentTiles) -> tuple[int, int]:
    """``(splits, tokens per split)`` of the dK/dV kernel: enough programs to fill the GPU
    (:data:`DKDV_PROGRAMS`), each split a multiple of ``BLOCK_M1`` and at least
    :data:`MIN_SPLIT_TOKENS` tokens. A function of the shapes only (deterministic sums)."""
    blocks = -(-latents // tiles.BLOCK_N1) * heads
    want = max(1, -(-DKDV_PROGRAMS // blocks))
    splits = max(1, min(want, tokens // MIN_SPLIT_TOKENS))
    per = -(-tokens // splits)
    per = -(-per // tiles.BLOCK_M1) * tiles.BLOCK_M1
    return -(-tokens // per) if tokens else 1, max(per, tiles.BLOCK_M1)


# ---- the PyTorch path ------------------------------------------------------------------------


def check_latent_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shape checks shared by both paths (a clear ValueError)."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"latent attention: q must be [T, H, D] and k, v [R, H, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or k.shape[0] < 1 or q.shape[1:] != k.shape[1:]:
        raise ValueError(
            f"latent attention: q {tuple(q.shape)} and k/v {tuple(k.shape)}, {tuple(v.shape)} "
            "do not match (k and v [R >= 1, H, D] with q's H and D)"
        )


def _scale(d: int, softmax_scale: float | None) -> float:
    return d**-0.5 if softmax_scale is None else float(softmax_scale)


def _math_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _chunks(q: torch.Tensor, latents: int) -> Iterator[slice]:
    step = max(1, SCORE_CHUNK // max(1, q.shape[1] * latents))
    for s in range(0, q.shape[0], step):
        yield slice(s, s + step)


def latent_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch path: ``(out [T, H, D] in q's dtype, lse [H, T])``, explicit scores in
    float32 (float64 and a float64 LSE for float64 inputs), in token chunks."""
    check_latent_qkv(q, k, v)
    scale, dt = _scale(q.shape[2], softmax_scale), _math_dtype(q)
    kf, vf = k.to(dt), v.to(dt)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((q.shape[1], q.shape[0]), dtype=dt, device=q.device)
    for c in _chunks(q, k.shape[0]):
        s = torch.einsum("thd,rhd->htr", q[c].to(dt), kf) * scale
        lse[:, c] = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse[:, c, None])
        out[c] = torch.einsum("htr,rhd->thd", p, vf).to(q.dtype)
    return out, lse


def latent_attention_bwd_ref(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    softmax_scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The PyTorch backward from the LSE (P recomputed, never the forward): ``(dq, dk, dv)`` in
    the inputs' dtypes, float32 math (float64 for float64)."""
    scale, dt = _scale(q.shape[2], softmax_scale), _math_dtype(q)
    kf, vf = k.to(dt), v.to(dt)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=dt, device=k.device)
    dv = torch.zeros(v.shape, dtype=dt, device=v.device)
    for c in _chunks(q, k.shape[0]):
        qc, doc = q[c].to(dt), do[c].to(dt)
        p = torch.exp(torch.einsum("thd,rhd->htr", qc, kf) * scale - lse[:, c, None].to(dt))
        delta = (doc * out[c].to(dt)).sum(-1).transpose(0, 1)  # [H, t]
        dv += torch.einsum("htr,thd->rhd", p, doc)
        ds = p * (torch.einsum("thd,rhd->htr", doc, vf) - delta[..., None])
        dq[c] = (torch.einsum("htr,rhd->thd", ds, kf) * scale).to(q.dtype)
        dk += torch.einsum("htr,thd->rhd", ds, qc)
    return dq, (dk * scale).to(k.dtype), dv.to(v.dtype)


# ---- the Triton kernels ----------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _offsets(
        n_rows, BLOCK: tl.constexpr, STEP: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """``(h, offs, ok, offs_step, offs_d, d_ok)``: this program's head (``program_id(1)``),
        its block of ``BLOCK`` rows (``program_id(0)``) of ``n_rows`` with their mask, the
        ``STEP`` offsets of its loop over the other side, the head dims and their mask."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, BLOCK_D)
        return tl.program_id(1), offs, offs < n_rows, tl.arange(0, STEP), offs_d, offs_d < HEAD_DIM

    @triton.jit
    def latent_attention_fwd_kernel(
        Q, K, V, O, LSE,
        stride_qt, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_ot, stride_oh,
        n_tokens, n_latents, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """out and lse of one BLOCK_M block of tokens of one head, over all latents.

        Q, O ``[T, H, D]``; K, V ``[R, H, D]``; LSE ``[H, T]`` float32. qk_scale = softmax scale
        * log2(e): scores live in the log2 domain inside the kernel."""
        h, offs_m, m_ok, offs_n, offs_d, d_ok = _offsets(n_tokens, BLOCK_M, BLOCK_N, HEAD_DIM,
                                                         BLOCK_D)  # fmt: skip
        rows = offs_m.to(tl.int64)
        q = _load_rows(Q, 0, rows, m_ok, stride_qt, h, stride_qh, offs_d, d_ok)
        kt_ptrs = _cols(K, 0, offs_n, stride_kr, h, stride_kh, offs_d)  # [D, N]
        v_ptrs = _rows(V, 0, offs_n, stride_vr, h, stride_vh, offs_d)
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for n0 in range(0, n_latents, BLOCK_N):
            n_ok = (n0 + offs_n) < n_latents
            kt = tl.load(kt_ptrs + n0 * stride_kr, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
            qk = tl.dot(q, kt, input_precision=DOT_PREC)
            # the first block holds latent 0: every row's max is finite from the start
            qk = tl.where(n_ok[None, :], qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_ij[:, None])
            alpha = tl.math.exp2(m_i - m_ij)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptrs + n0 * stride_vr, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
            m_i = m_ij
        acc = acc / l_i[:, None]
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # natural log
        tl.store(LSE + h.to(tl.int64) * n_tokens + offs_m, lse, mask=m_ok)
        _store_rows(O, acc, 0, rows, m_ok, stride_ot, h, stride_oh, offs_d, d_ok)

    @triton.jit
    def latent_attention_bwd_dq_kernel(
        Q, K, V, O, DO, LSE, DELTA, DQ,
        stride_qt, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh,
        stride_ot, stride_oh, stride_dot, stride_doh, stride_dqt, stride_dqh,
        n_tokens, n_latents, sm_scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """dQ of one BLOCK_M2 token block of one head, and its rows of DELTA ``[H, T]`` =
        rowsum(dO * O) in float32, which the dK/dV kernel reads (launched after this one)."""
        h, offs_m, m_ok, offs_n, offs_d, d_ok = _offsets(n_tokens, BLOCK_M2, BLOCK_N2, HEAD_DIM,
                                                         BLOCK_D)  # fmt: skip
        rows = offs_m.to(tl.int64)
        q = _load_rows(Q, 0, rows, m_ok, stride_qt, h, stride_qh, offs_d, d_ok)
        do = _load_rows(DO, 0, rows, m_ok, stride_dot, h, stride_doh, offs_d, d_ok)
        o = _load_rows(O, 0, rows, m_ok, stride_ot, h, stride_oh, offs_d, d_ok)
        di = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        row_h = h.to(tl.int64) * n_tokens + offs_m
        tl.store(DELTA + row_h, di, mask=m_ok)
        lse2 = tl.load(LSE + row_h, mask=m_ok, other=0.0) * 1.4426950408889634
        dq = tl.zeros([BLOCK_M2, BLOCK_D], dtype=tl.float32)
        # K, V loaded transposed: [BLOCK_D, BLOCK_N2]
        kt_ptrs = _cols(K, 0, offs_n, stride_kr, h, stride_kh, offs_d)
        vt_ptrs = _cols(V, 0, offs_n, stride_vr, h, stride_vh, offs_d)
        for n0 in range(0, n_latents, BLOCK_N2):
            n_ok = (n0 + offs_n) < n_latents
            kv_mask = d_ok[:, None] & n_ok[None, :]
            kt = tl.load(kt_ptrs + n0 * stride_kr, mask=kv_mask, other=0.0)
            vt = tl.load(vt_ptrs + n0 * stride_vr, mask=kv_mask, other=0.0)
            qk = tl.dot(q, kt, input_precision=DOT_PREC)
            p = tl.where(n_ok[None, :], tl.math.exp2(qk * qk_scale - lse2[:, None]), 0.0)
            dp = tl.dot(do, vt, input_precision=DOT_PREC)
            ds = p * (dp - di[:, None])
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
        dq = dq * sm_scale
        _store_rows(DQ, dq, 0, rows, m_ok, stride_dqt, h, stride_dqh, offs_d, d_ok)

    @triton.jit
    def latent_attention_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DKP, DVP,
        stride_qt, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_dot, stride_doh,
        n_tokens, n_latents, split_tokens, sm_scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, DOT_PREC: tl.constexpr,
    ):  # fmt: skip
        """The float32 partial dK, dV of one BLOCK_N1 latent block of one head over the tokens
        of split ``program_id(2)`` (``split_tokens`` each, a multiple of BLOCK_M1). DKP, DVP are
        ``[splits, R, H, D]`` contiguous float32; the launcher sums them over splits."""
        h, offs_n, n_ok, offs_m, offs_d, d_ok = _offsets(n_latents, BLOCK_N1, BLOCK_M1, HEAD_DIM,
                                                         BLOCK_D)  # fmt: skip
        split = tl.program_id(2)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = _load_rows(K, 0, offs_n, n_ok, stride_kr, h, stride_kh, offs_d, d_ok)
        v = _load_rows(V, 0, offs_n, n_ok, stride_vr, h, stride_vh, offs_d, d_ok)
        dk = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N1, BLOCK_D], dtype=tl.float32)
        lo = split * split_tokens
        hi = tl.minimum(lo + split_tokens, n_tokens)
        row_h = h.to(tl.int64) * n_tokens
        for m0 in range(lo, hi, BLOCK_M1):
            m_ok = (m0 + offs_m) < hi
            rows = (m0 + offs_m).to(tl.int64)
            # Q loaded transposed: [BLOCK_D, BLOCK_M1]
            qt = tl.load(
                _cols(Q, 0, rows, stride_qt, h, stride_qh, offs_d),
                mask=d_ok[:, None] & m_ok[None, :], other=0.0,
            )  # fmt: skip
            do = _load_rows(DO, 0, rows, m_ok, stride_dot, h, stride_doh, offs_d, d_ok)
            lse2 = tl.load(LSE + row_h + rows, mask=m_ok, other=0.0) * 1.4426950408889634
            di = tl.load(DELTA + row_h + rows, mask=m_ok, other=0.0)
            qkt = tl.dot(k, qt, input_precision=DOT_PREC)  # [BLOCK_N1, BLOCK_M1]
            pt = tl.where(m_ok[None, :], tl.math.exp2(qkt * qk_scale - lse2[None, :]), 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PREC)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            dst = pt * (dpt - di[None, :])
            dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
        out = (
            (split.to(tl.int64) * n_latents + offs_n[:, None]) * (tl.num_programs(1) * HEAD_DIM)
            + h * HEAD_DIM + offs_d[None, :]
        )  # fmt: skip
        tl.store(DKP + out, dk * sm_scale, mask=kv_mask)
        tl.store(DVP + out, dv, mask=kv_mask)


# ---- launchers -------------------------------------------------------------------------------


def uses_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether these inputs run the Triton kernels: :func:`~._launch.use_triton` (CUDA tensors,
    or any under the interpreter), one dtype, float16/bfloat16 (float32 too under the
    interpreter), head dim <= :data:`MAX_HEAD_DIM`.

    float32 CUDA tensors take the PyTorch path, as the varlen attention's do: the kernels' IEEE
    float32 dots run without tensor cores and spill registers on sm_90 at these tiles."""
    ok = (torch.float16, torch.bfloat16) + ((torch.float32,) if INTERPRET else ())
    same = q.dtype == k.dtype == v.dtype and q.dtype in ok
    return same and q.shape[2] <= MAX_HEAD_DIM and use_triton(q, k, v)


def latent_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, softmax_scale: float | None = None,
    tiles: LatentTiles | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(out [T, H, D] q.dtype, lse [H, T] float32)``: the Triton kernel where
    :func:`uses_triton`, else :func:`latent_attention_ref`. ``tiles`` overrides
    :func:`latent_attention_tiles` (tests use small tiles to exercise the loops)."""
    check_latent_qkv(q, k, v)
    if not uses_triton(q, k, v):
        return latent_attention_ref(q, k, v, softmax_scale)
    q, k, v = last_dim_contiguous(q, k, v)
    (t_, h, d), r = q.shape, k.shape[0]
    t = tiles or latent_attention_tiles(d, q.dtype)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((h, t_), dtype=torch.float32, device=q.device)
    if t_ == 0:
        return out, lse
    latent_attention_fwd_kernel[(triton.cdiv(t_, t.BLOCK_M), h)](
        q, k, v, out, lse,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), t_, r, _scale(d, softmax_scale) * LOG2E,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M=t.BLOCK_M, BLOCK_N=t.BLOCK_N, DOT_PREC="ieee",
        num_warps=t.fwd_warps, num_stages=t.fwd_stages,
    )  # fmt: skip
    return out, lse


def latent_attention_bwd(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    softmax_scale: float | None = None, tiles: LatentTiles | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(dq, dk, dv)`` in the inputs' dtypes from the forward's ``out`` and ``lse``: the dQ
    kernel (which also writes delta), then the split dK/dV kernel and the sum of its partials;
    :func:`latent_attention_bwd_ref` where :func:`uses_triton` is False."""
    if not uses_triton(q, k, v):
        return latent_attention_bwd_ref(do, q, k, v, out, lse, softmax_scale)
    q, k, v, out, do = last_dim_contiguous(q, k, v, out, do)
    (t_, h, d), r = q.shape, k.shape[0]
    t = tiles or latent_attention_tiles(d, q.dtype)
    scale = _scale(d, softmax_scale)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if t_ == 0:
        return dq, torch.zeros_like(k), torch.zeros_like(v)
    lse = lse.float().contiguous()
    delta = torch.empty((h, t_), dtype=torch.float32, device=q.device)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    latent_attention_bwd_dq_kernel[(triton.cdiv(t_, t.BLOCK_M2), h)](
        q, k, v, out, do, lse, delta, dq, *strides,
        out.stride(0), out.stride(1), do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        t_, r, scale, scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M2=t.BLOCK_M2, BLOCK_N2=t.BLOCK_N2, DOT_PREC="ieee",
        num_warps=t.dq_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    splits, per = dkdv_splits(t_, r, h, t)
    dkp = torch.empty((splits, r, h, d), dtype=torch.float32, device=q.device)
    dvp = torch.empty_like(dkp)
    latent_attention_bwd_dkdv_kernel[(triton.cdiv(r, t.BLOCK_N1), h, splits)](
        q, k, v, do, lse, delta, dkp, dvp, *strides, do.stride(0), do.stride(1),
        t_, r, per, scale, scale * LOG2E,
        HEAD_DIM=d, BLOCK_D=t.BLOCK_D, BLOCK_M1=t.BLOCK_M1, BLOCK_N1=t.BLOCK_N1, DOT_PREC="ieee",
        num_warps=t.dkdv_warps, num_stages=t.bwd_stages,
    )  # fmt: skip
    return dq, dkp.sum(0).to(k.dtype), dvp.sum(0).to(v.dtype)


# ---- sm_90 compile rows ----------------------------------------------------------------------


def _sm90_signature(kernel, dt: str) -> dict:
    """Every argument of ``kernel`` typed as the launchers pass it: q/k/v/out/dO/dQ in ``dt``,
    lse, delta and the dK/dV partials float32, strides and sizes i32, scales fp32."""
    fp32 = {"LSE", "DELTA", "DKP", "DVP"}
    sig = {}
    for param in kernel.params:
        n = param.name
        if param.is_constexpr:
            sig[n] = "constexpr"
        elif n.isupper():
            sig[n] = "*fp32" if n in fp32 else f"*{dt}"
        elif n.startswith(("stride_", "n_")) or n == "split_tokens":
            sig[n] = "i32"
        else:
            sig[n] = "fp32"  # sm_scale, qk_scale
    return sig


def _sm90_configs(head_dims: Iterable[int], dtypes: Iterable[str]) -> Iterator[Sm90Config]:
    """Each kernel's :data:`~._aot.Sm90Config` rows at :func:`latent_attention_tiles`' sizes.
    dtypes: Triton type names of q, k, v, out and the gradients (bf16, fp16: float32 CUDA
    tensors take the PyTorch path, see :func:`uses_triton`)."""
    torch_dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    for d, dt in itertools.product(head_dims, dtypes):
        t = latent_attention_tiles(d, torch_dtypes[dt])
        base = {"HEAD_DIM": d, "BLOCK_D": t.BLOCK_D, "DOT_PREC": "ieee"}
        rows = (
            ("latent_fwd", latent_attention_fwd_kernel, {"BLOCK_M": t.BLOCK_M,
             "BLOCK_N": t.BLOCK_N}, t.fwd_warps, t.fwd_stages),
            ("latent_bwd_dq", latent_attention_bwd_dq_kernel, {"BLOCK_M2": t.BLOCK_M2,
             "BLOCK_N2": t.BLOCK_N2}, t.dq_warps, t.bwd_stages),
            ("latent_bwd_dkdv", latent_attention_bwd_dkdv_kernel, {"BLOCK_M1": t.BLOCK_M1,
             "BLOCK_N1": t.BLOCK_N1}, t.dkdv_warps, t.bwd_stages),
        )  # fmt: skip
        for name, kernel, blocks, warps, stages in rows:
            opts = {"num_warps": warps, "num_stages": stages}
            label = f"{name} D={d} {dt}"
            yield label, kernel, _sm90_signature(kernel, dt), base | blocks, opts
