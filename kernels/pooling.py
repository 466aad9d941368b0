"""Pooling over packed segments.

    hidden      [total_tokens, H]        any float dtype
    cu_seqlens  [n_texts + 1] int32      text boundaries
    pool_mask   [total_tokens] bool      tokens that count for pooling (the text, not its
                                         instruction; for ``bos_token`` the BOS positions)
    returns     [n_texts, H] float32 (float64 for float64 input)

Modes (the official llm2vec semantics, restated on packed input):

- ``mean``: mean of the masked tokens. A text with no masked token pools its whole segment
  (the official library averages its whole padded row there, a batch-dependent value).
- ``weighted_mean``: weights 1..n over the n masked tokens in order, normalised to sum 1;
  no masked token gives a zero vector (as the official library does).
- ``last_token``: the segment's last token, whatever the mask (``eos_token`` mode uses this).
- ``bos_token``: the first masked token; a text with no masked token is an error.

The Triton kernels (below the reference) run one program per (text, block of ``BLOCK_H``
hidden columns); each walks its text's tokens once in ``BLOCK_T`` chunks, accumulating in the
output's dtype (float32, or float64 for float64 input). The forward also writes one int32 per
text (``aux``: the masked count for ``mean``/``weighted_mean``, the first masked position for
``bos_token``), from which the backward recomputes every token's weight and writes
``d_hidden [T, H]`` in hidden's dtype: each token belongs to exactly one program per column
block, so no atomics. ``cu_seqlens`` must run from 0 to T, as the reference requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ._aot import SM90_DTYPES, Sm90Config
from ._launch import HAVE_TRITON, contiguous, next_pow2

if HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the PyTorch reference still works
    triton = None

__all__ = ["POOLING_MODES", "mask_bytes", "segment_pool_bwd", "segment_pool_fwd",
           "segment_pool_prepare", "segment_pool_ref"]  # fmt: skip

POOLING_MODES = ("mean", "weighted_mean", "last_token", "bos_token")
_MODE_ID = {name: i for i, name in enumerate(POOLING_MODES)}  # the kernels' MODE constexpr


def segment_pool_ref(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """PyTorch reference for :func:`llm2vec_fast.kernels.segment_pool` (differentiable)."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [total_tokens, hidden]; got {tuple(hidden.shape)}")
    total = hidden.shape[0]
    if pool_mask.shape != (total,):
        raise ValueError(f"pool_mask must be [{total}]; got {tuple(pool_mask.shape)}")
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.long)
    n = cu.numel() - 1
    lengths = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(n, device=hidden.device), lengths)
    h = hidden if hidden.dtype == torch.float64 else hidden.float()
    mask = pool_mask.to(device=hidden.device, dtype=torch.bool)
    out = h.new_zeros(n, h.shape[1])

    if mode == "last_token":
        if bool((lengths == 0).any()):
            raise ValueError("last_token pooling needs every text to have at least one token")
        return h[cu[1:] - 1]

    m = mask.to(h.dtype)
    counts = h.new_zeros(n).index_add_(0, seg, m)
    if mode == "mean":
        # texts with nothing masked pool their whole segment
        empty = (counts == 0)[seg]
        w = torch.where(empty, torch.ones_like(m), m)
        denom = h.new_zeros(n).index_add_(0, seg, w).clamp_min(1.0)
        out = out.index_add(0, seg, h * w[:, None])
        return out / denom[:, None]
    if mode == "weighted_mean":
        # rank of each masked token inside its text: 1..n
        csum = torch.cumsum(m, 0)
        start = torch.cat([csum.new_zeros(1), csum])[cu[:-1]]
        rank = (csum - start[seg]) * m
        denom = (counts * (counts + 1) / 2).clamp_min(1e-9)
        w = rank / denom[seg]
        return out.index_add(0, seg, h * w[:, None])
    # bos_token: first masked position of each text
    if bool((counts == 0).any()):
        bad = int(torch.nonzero(counts == 0)[0])
        raise ValueError(
            f"bos_token pooling: text {bad} of the batch contains no BOS token "
            "(does the tokenizer add one?)"
        )
    pos = torch.arange(total, device=h.device)
    big = torch.full((total,), total, device=h.device, dtype=torch.long)
    first = torch.full((n,), total, device=h.device, dtype=torch.long)
    first = first.scatter_reduce(0, seg, torch.where(mask, pos, big), reduce="amin")
    return h[first]


# --------------------------------------------------------------------------------------------
# Triton


def _config(n_cols: int, mode: str = "mean", backward: bool = False) -> dict:
    """Block sizes and warps for hidden size ``n_cols``, ``mode`` and direction.

    Forward: 64 columns by 64 tokens, 1.8x the first 256 x 32 on an H200 (mean pooling of
    16.8k x 4096 bf16 tokens, bench/tune_kernels.py, twice; more programs, more loads in
    flight); weighted_mean keeps 32-token blocks (at 64 its fp16 forward takes a stack frame
    on sm_90). Backward: 256 x 32, the blocks it was measured at (fwd+bwd 0.36 ms there); with
    the forward's blocks fwd+bwd measured 0.86 ms."""
    if backward:
        return {"BLOCK_T": 32, "BLOCK_H": min(256, next_pow2(n_cols)), "num_warps": 4}
    block_t = 32 if mode == "weighted_mean" else 64
    return {"BLOCK_T": block_t, "BLOCK_H": min(64, next_pow2(n_cols)), "num_warps": 4}


if HAVE_TRITON:

    @triton.jit
    def _segment_block(CU, n_cols, BLOCK_H: tl.constexpr):
        """This program's segment, its column block, the segment's [start, end) rows, the
        block's columns and the mask of those < n_cols."""
        seg = tl.program_id(0)
        pid_h = tl.program_id(1)
        start = tl.load(CU + seg)
        end = tl.load(CU + seg + 1)
        cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        return seg, pid_h, start, end, cols, cols < n_cols

    @triton.jit
    def _segment_pool_fwd_kernel(
        OUT, AUX, HIDDEN, MASK, CU, stride_o, stride_h, n_cols,
        MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    ):  # fmt: skip
        """OUT ``[n_texts, H]`` float32 (float64) out; AUX ``[n_texts]`` int32 out: masked count
        (mean, weighted) / first masked position (bos); HIDDEN ``[T, H]``, last dim contiguous;
        MASK ``[T]`` uint8 (a bool mask viewed as bytes); CU ``[n_texts + 1]`` int32. MODE: 0 mean,
        1 weighted_mean, 2 last_token, 3 bos_token."""
        seg, pid_h, start, end, cols, cmask = _segment_block(CU, n_cols, BLOCK_H)
        acc_ty = OUT.dtype.element_ty
        out_ptr = OUT + seg.to(tl.int64) * stride_o + cols
        if MODE == 2:  # last_token: one row
            row = (end - 1).to(tl.int64)
            h = tl.load(HIDDEN + row * stride_h + cols, mask=cmask, other=0.0)
            tl.store(out_ptr, h.to(acc_ty), mask=cmask)
        elif MODE == 3:  # bos_token: walk the mask only, until the first masked token
            offs = tl.arange(0, BLOCK_T)
            first = end
            t0 = start
            while (t0 < end) & (first == end):
                tok = t0 + offs
                m = tl.load(MASK + tok, mask=tok < end, other=0) != 0
                first = tl.minimum(first, tl.min(tl.where(m, tok, end), axis=0))
                t0 += BLOCK_T
            tl.store(AUX + seg, first, mask=pid_h == 0)
            lim = tl.where(first < end, n_cols, 0)  # no masked token (the host raises): zeros
            h = tl.load(HIDDEN + first.to(tl.int64) * stride_h + cols, mask=cols < lim, other=0.0)
            tl.store(out_ptr, h.to(acc_ty), mask=cmask)
        else:  # mean / weighted_mean: one pass over the segment
            offs = tl.arange(0, BLOCK_T)
            acc = tl.zeros([BLOCK_H], dtype=acc_ty)  # masked sum / rank-weighted sum
            acc_all = tl.zeros([BLOCK_H], dtype=acc_ty)  # mean: the whole segment's sum
            cnt = start * 0  # masked tokens so far (int32)
            for t0 in range(start, end, BLOCK_T):
                tok = t0 + offs
                tmask = tok < end
                m = tl.load(MASK + tok, mask=tmask, other=0) != 0
                ptrs = HIDDEN + tok.to(tl.int64)[:, None] * stride_h + cols[None, :]
                h = tl.load(ptrs, mask=tmask[:, None] & cmask[None, :], other=0.0).to(acc_ty)
                mi = m.to(tl.int32)
                if MODE == 0:
                    acc += tl.sum(tl.where(m[:, None], h, 0.0), axis=0)
                    acc_all += tl.sum(h, axis=0)
                else:
                    rank = tl.where(m, cnt + tl.cumsum(mi, axis=0), 0).to(acc_ty)
                    acc += tl.sum(h * rank[:, None], axis=0)
                cnt += tl.sum(mi, axis=0)
            tl.store(AUX + seg, cnt, mask=pid_h == 0)
            n = cnt.to(acc_ty)
            if MODE == 0:
                # nothing masked: the whole segment (an empty one gives zeros)
                length = tl.maximum(end - start, 1).to(acc_ty)
                res = tl.where(cnt > 0, acc / tl.maximum(n, 1.0), acc_all / length)
            else:
                res = acc / tl.maximum(n * (n + 1.0) * 0.5, 1.0)  # nothing masked: zeros
            tl.store(out_ptr, res, mask=cmask)

    @triton.jit
    def _segment_pool_bwd_kernel(
        DH, DOUT, AUX, MASK, CU, stride_dh, stride_do, n_cols,
        MODE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    ):  # fmt: skip
        """DH ``[T, H]`` out, hidden's dtype, zeroed beforehand for last_token / bos_token; DOUT
        ``[n_texts, H]`` float32 (float64), last dim contiguous; AUX ``[n_texts]`` int32 from the
        forward; MASK ``[T]`` uint8; CU ``[n_texts + 1]`` int32."""
        seg, pid_h, start, end, cols, cmask = _segment_block(CU, n_cols, BLOCK_H)
        acc_ty = DOUT.dtype.element_ty
        dout = tl.load(DOUT + seg.to(tl.int64) * stride_do + cols, mask=cmask, other=0.0)
        if MODE >= 2:  # one row gets d_out, the rest stays zero
            if MODE == 2:
                row = end - 1
            else:
                row = tl.load(AUX + seg)
            # no row (cannot happen after the host checks): store nothing
            lim = tl.where((row >= start) & (row < end), n_cols, 0)
            ptrs = DH + row.to(tl.int64) * stride_dh + cols
            tl.store(ptrs, dout.to(DH.dtype.element_ty), mask=cols < lim)
        else:
            offs = tl.arange(0, BLOCK_T)
            n_all = tl.load(AUX + seg)
            n = n_all.to(acc_ty)
            if MODE == 0:
                length = tl.maximum(end - start, 1).to(acc_ty)
                scale = tl.where(n_all > 0, 1.0 / tl.maximum(n, 1.0), 1.0 / length)
            else:
                scale = 1.0 / tl.maximum(n * (n + 1.0) * 0.5, 1.0)
            cnt = start * 0
            for t0 in range(start, end, BLOCK_T):
                tok = t0 + offs
                tmask = tok < end
                m = tl.load(MASK + tok, mask=tmask, other=0) != 0
                mi = m.to(tl.int32)
                if MODE == 0:
                    w = tl.where(m | (n_all == 0), scale, 0.0).to(acc_ty)
                else:
                    w = tl.where(m, cnt + tl.cumsum(mi, axis=0), 0).to(acc_ty) * scale
                    cnt += tl.sum(mi, axis=0)
                dh = w[:, None] * dout[None, :]
                ptrs = DH + tok.to(tl.int64)[:, None] * stride_dh + cols[None, :]
                tl.store(ptrs, dh.to(DH.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])


def _check(hidden: torch.Tensor, pool_mask: torch.Tensor, mode: str) -> None:
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [total_tokens, hidden]; got {tuple(hidden.shape)}")
    if pool_mask.shape != (hidden.shape[0],):
        raise ValueError(f"pool_mask must be [{hidden.shape[0]}]; got {tuple(pool_mask.shape)}")


def mask_bytes(pool_mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """pool_mask as a contiguous uint8 [T] on ``device`` (a bool mask is viewed, not copied)."""
    m = pool_mask.to(device)
    if m.dtype not in (torch.bool, torch.uint8):
        m = m != 0
    (m,) = contiguous(m)
    return m.view(torch.uint8)


def _launch(kernel, mode: str, n: int, n_cols: int, *args, backward: bool = False) -> None:
    """``kernel(*args, n_cols, MODE, BLOCK_T, BLOCK_H)``, one program per text and column block
    at :func:`_config`'s sizes; nothing for no texts or no columns."""
    if n and n_cols:
        cfg = _config(n_cols, mode, backward)
        grid = (n, triton.cdiv(n_cols, cfg["BLOCK_H"]))
        kernel[grid](
            *args, n_cols, MODE=_MODE_ID[mode], BLOCK_T=cfg["BLOCK_T"], BLOCK_H=cfg["BLOCK_H"],
            num_warps=cfg["num_warps"],
        )  # fmt: skip


def segment_pool_fwd(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, mask_u8: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: hidden ``[T, H]`` (float16/bfloat16/float32/float64), cu_seqlens int32
    ``[n + 1]``, mask_u8 uint8 ``[T]`` -> (out ``[n, H]`` float32 (float64 for float64 input),
    aux ``[n]`` int32: masked counts, or first masked positions for ``bos_token``)."""
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    n, n_cols = cu_seqlens.numel() - 1, hidden.shape[1]
    acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = torch.empty((n, n_cols), dtype=acc_dtype, device=hidden.device)
    aux = torch.zeros(n, dtype=torch.int32, device=hidden.device)
    _launch(
        _segment_pool_fwd_kernel, mode, n, n_cols,
        out, aux, hidden, mask_u8, cu_seqlens, out.stride(0), hidden.stride(0),
    )  # fmt: skip
    return out, aux


def segment_pool_bwd(
    d_out: torch.Tensor,
    aux: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mask_u8: torch.Tensor,
    mode: str,
    n_tokens: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Triton backward: d_out ``[n, H]`` float32 (float64) and the forward's aux ``[n]`` int32
    -> d_hidden ``[n_tokens, H]`` in ``dtype`` (hidden's)."""
    (d_out,) = contiguous(d_out)
    n, n_cols = d_out.shape
    alloc = torch.zeros if mode in ("last_token", "bos_token") else torch.empty
    dh = alloc((n_tokens, n_cols), dtype=dtype, device=d_out.device)
    _launch(
        _segment_pool_bwd_kernel, mode, n, n_cols,
        dh, d_out, aux, mask_u8, cu_seqlens, dh.stride(0), d_out.stride(0),
        backward=True,
    )  # fmt: skip
    return dh


def segment_pool_prepare(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path's checks (the errors of :func:`segment_pool_ref`) and inputs: (cu_seqlens
    int32, pool_mask uint8) on hidden's device. ``last_token`` and ``bos_token`` synchronise with
    the host once to raise their errors before launching."""
    _check(hidden, pool_mask, mode)
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.int32)
    mask = mask_bytes(pool_mask, hidden.device)
    if mode == "last_token" and bool((cu[1:] == cu[:-1]).any()):
        raise ValueError("last_token pooling needs every text to have at least one token")
    if mode == "bos_token":
        csum = torch.cat([cu.new_zeros(1, dtype=torch.long), mask.cumsum(0)])
        counts = csum[cu[1:].long()] - csum[cu[:-1].long()]
        if bool((counts == 0).any()):
            bad = int(torch.nonzero(counts == 0)[0])
            raise ValueError(
                f"bos_token pooling: text {bad} of the batch contains no BOS token "
                "(does the tokenizer add one?)"
            )
    return cu, mask


def _sm90_configs(
    hidden_sizes: Iterable[int],
    dtypes: Iterable[str] = SM90_DTYPES,
    modes: Iterable[str] = POOLING_MODES,
) -> Iterator[Sm90Config]:
    """Each kernel's :data:`~._aot.Sm90Config` rows. dtypes: Triton type names of hidden (and
    d_hidden); outputs are float32."""
    dtypes, modes = tuple(dtypes), tuple(modes)
    tail = {"n_cols": "i32", "MODE": "constexpr", "BLOCK_T": "constexpr", "BLOCK_H": "constexpr"}
    for h in hidden_sizes:
        for dt in dtypes:
            for mode in modes:
                launch = {}  # direction -> (constexprs, options) at _config's sizes
                for bwd in (False, True):
                    cfg = _config(h, mode, bwd)
                    const = {"MODE": _MODE_ID[mode], "BLOCK_T": cfg["BLOCK_T"],
                             "BLOCK_H": cfg["BLOCK_H"]}  # fmt: skip
                    launch[bwd] = const, {"num_warps": cfg["num_warps"]}
                fwd_sig = {"OUT": "*fp32", "AUX": "*i32", "HIDDEN": f"*{dt}", "MASK": "*u8"}
                fwd_sig.update(CU="*i32", stride_o="i32", stride_h="i32", **tail)
                bwd_sig = {"DH": f"*{dt}", "DOUT": "*fp32", "AUX": "*i32", "MASK": "*u8"}
                bwd_sig.update(CU="*i32", stride_dh="i32", stride_do="i32", **tail)
                tag = f"H={h} {dt} {mode}"
                yield f"segment_pool_fwd {tag}", _segment_pool_fwd_kernel, fwd_sig, *launch[False]
                yield f"segment_pool_bwd {tag}", _segment_pool_bwd_kernel, bwd_sig, *launch[True]
