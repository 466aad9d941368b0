"""Cross-entropy over a block of logits, its gradient written over the logits: the softmax step
of :func:`llm2vec_fast.training.linear_cross_entropy`, one ``[chunk, vocab]`` block at a time.

    logits  [n, V] float32 / float16 / bfloat16, last dim contiguous; the kernel overwrites it
            with the gradient (when asked)
    target  [n] int64 / int32: a class in [0, V), or ``ignore_index``
    scale   float: the gradient's scale (``1 / count`` for a mean over the counted rows)
    loss    [n] float32: ``logsumexp(logits[i]) - logits[i, target[i]]``; 0 on ignored rows
    grad    [n, V] logits' dtype: ``(softmax(logits[i]) - onehot(target[i])) * scale``; zeros
            on ignored rows

The Triton kernel is Liger-Kernel's cross-entropy kernel cut down to what MNTP needs (hard
labels, mean scale; no class weights, label smoothing, z-loss or softcapping): one program per
row, two passes over V in ``BLOCK`` columns. The first keeps an online max and sum of
exponentials (float32) and gives the logsumexp and the loss; the second reads each block again
and writes ``(exp(x - lse) - [col == target]) * scale`` over it, rounding once to the logits'
dtype. No other ``[n, V]`` buffer exists: the logits the matmul produced (in its dtype, bf16 for
a bf16 model) become the gradient. A target outside [0, V) that is not ``ignore_index`` gives a
NaN loss in the kernel (it does not read out of bounds); the reference raises.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from ._aot import SM90_DTYPES, Sm90Config
from ._launch import HAVE_TRITON, contiguous, next_pow2, num_warps_for

if HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the PyTorch reference still works
    triton = None

__all__ = ["KERNEL_DTYPES", "cross_entropy_fwd", "cross_entropy_grad_ref"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # logits the kernel takes
# Columns per loop step: 16 per thread at 8 warps. Compiled for sm_90 (triton 3.9) that is
# 46 registers (bf16 logits) or 55 (float32), 4-5 programs per SM; 16384 columns at 16 warps
# needed 92-103 (one program per SM) and Liger's 32768 at 32 warps spilled.
_MAX_BLOCK = 4096


def cross_entropy_grad_ref(
    logits: torch.Tensor, target: torch.Tensor, scale: float, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference: logits ``[n, V]`` (any float dtype, not modified), target ``[n]`` ->
    (loss ``[n]``, grad ``[n, V]`` in logits' dtype), both as in the module doc. The math runs in
    float32 (float64 for float64 logits), and so does the loss. Raises ``ValueError`` for a
    target outside [0, V) that is not ``ignore_index``."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [n, V] and target [n]; got {tuple(logits.shape)}, "
            f"{tuple(target.shape)}"
        )
    n, vocab = logits.shape
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    if bool(((t < 0) | (t >= vocab)).any()):
        raise ValueError(f"targets must lie in [0, {vocab}) or be ignore_index={ignore_index}")
    lse = torch.logsumexp(x, dim=-1)
    picked = x.gather(1, t[:, None]).squeeze(1)
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    grad = (x - lse[:, None]).exp_()
    grad[torch.arange(n, device=x.device), t] -= 1.0
    grad.mul_((valid.to(x.dtype) * scale)[:, None])
    return loss, grad.to(logits.dtype)


# --------------------------------------------------------------------------------------------
# Triton


def _config(n_cols: int) -> dict:
    """Columns per loop step and warps for rows of ``n_cols`` logits."""
    block = min(max(next_pow2(n_cols), 16), _MAX_BLOCK)
    return {"BLOCK": block, "num_warps": num_warps_for(block)}


if HAVE_TRITON:

    @triton.jit
    def _load_block(ptr, offs, n_cols, MASKED: tl.constexpr):
        """Logits ``ptr[offs]`` as float32; MASKED: columns past ``n_cols`` read as -inf."""
        if MASKED:
            x = tl.load(ptr + offs, mask=offs < n_cols, other=float("-inf"))
        else:
            x = tl.load(ptr + offs)
        return x.to(tl.float32)

    @triton.jit
    def _online_lse(x, m, d):
        """One step of the online logsumexp: (max m, sum d of exp(x - m)) after block x."""
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # while every logit so far is -inf (a masking bias), d stays 0, not NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), axis=0)
        return m_new, d

    @triton.jit
    def _grad_block(ptr, offs, n_cols, y, lse, scale, MASKED: tl.constexpr):
        """Overwrite the logits ``ptr[offs]`` with ``(exp(x - lse) - [offs == y]) * scale``."""
        p = tl.exp(_load_block(ptr, offs, n_cols, MASKED) - lse)
        g = (tl.where(offs == y, p - 1.0, p) * scale).to(ptr.dtype.element_ty)
        if MASKED:
            tl.store(ptr + offs, g, mask=offs < n_cols)
        else:
            tl.store(ptr + offs, g)

    @triton.jit
    def _cross_entropy_fwd_kernel(
        LOGITS,  # [n, V] in: logits; out: the gradient (HAS_GRAD); last dim contiguous
        LOSS,  # [n] float32 out
        TARGET,  # [n] int
        stride_l,
        n_cols,
        scale,  # float32: the gradient's scale on counted rows
        ignore_index,
        HAS_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # Full blocks are read without a mask (vectorised loads whenever the row start is
        # 16-aligned); the last partial block, if any, with one.
        row = tl.program_id(0).to(tl.int64)
        ptr = LOGITS + row * stride_l
        cols = tl.arange(0, BLOCK)
        n_full = (n_cols // BLOCK) * BLOCK
        y = tl.load(TARGET + row)
        if y == ignore_index:
            tl.store(LOSS + row, 0.0)
            if HAS_GRAD:
                zeros = tl.zeros([BLOCK], dtype=LOGITS.dtype.element_ty)
                for start in range(0, n_cols, BLOCK):
                    offs = start + cols
                    tl.store(ptr + offs, zeros, mask=offs < n_cols)
        else:
            # the target's logit, read before the second pass overwrites it (NaN: out of range)
            x_y = tl.load(ptr + y, mask=(y >= 0) & (y < n_cols), other=float("nan"))
            # pass 1: online max m and sum d of exp(x - m), float32
            m = tl.full([], float("-inf"), tl.float32)
            d = tl.zeros([], tl.float32)
            for start in range(0, n_full, BLOCK):
                m, d = _online_lse(_load_block(ptr, start + cols, n_cols, False), m, d)
            if n_full < n_cols:
                m, d = _online_lse(_load_block(ptr, n_full + cols, n_cols, True), m, d)
            lse = m + tl.log(d)
            tl.store(LOSS + row, lse - x_y.to(tl.float32))
            if HAS_GRAD:
                # every thread has read x_y (and pass 1) before any writes the gradient
                tl.debug_barrier()
                # pass 2: the gradient over the logits, rounded once to their dtype
                for start in range(0, n_full, BLOCK):
                    _grad_block(ptr, start + cols, n_cols, y, lse, scale, False)
                if n_full < n_cols:
                    _grad_block(ptr, n_full + cols, n_cols, y, lse, scale, True)


def cross_entropy_fwd(
    logits: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    ignore_index: int = -100,
    *,
    compute_grad: bool = True,
) -> torch.Tensor:
    """Triton: the loss ``[n]`` float32 of each row of ``logits [n, V]`` (see the module doc);
    with ``compute_grad`` the gradient ``(softmax - onehot) * scale`` (zeros on ignored rows)
    overwrites ``logits`` in place, in its dtype. ``logits``: float32 / float16 / bfloat16 with a
    contiguous last dim (any row stride); ``target [n]`` int32 / int64."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [n, V] and target [n]; got {tuple(logits.shape)}, "
            f"{tuple(target.shape)}"
        )
    if logits.dtype not in KERNEL_DTYPES:
        raise ValueError(f"logits must be float32, float16 or bfloat16; got {logits.dtype}")
    if logits.shape[1] > 1 and logits.stride(1) != 1:
        raise ValueError("logits must have a contiguous last dim (it is written in place)")
    (target,) = contiguous(target)
    n, vocab = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        cfg = _config(vocab)
        _cross_entropy_fwd_kernel[(n,)](
            logits, loss, target, logits.stride(0), vocab, float(scale), int(ignore_index),
            HAS_GRAD=bool(compute_grad), BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
        )  # fmt: skip
    return loss


def _sm90_configs(
    vocab_sizes: Iterable[int],
    dtypes: Iterable[str] = SM90_DTYPES,
    targets: Iterable[str] = ("i64",),
) -> Iterator[Sm90Config]:
    """The kernel's :data:`~._aot.Sm90Config` rows, with and without the gradient. dtypes: Triton
    type names of the logits; targets: of the target."""
    for v, dt, tt, has_grad in itertools.product(vocab_sizes, dtypes, targets, (True, False)):
        cfg = _config(v)
        sig = {
            "LOGITS": f"*{dt}", "LOSS": "*fp32", "TARGET": f"*{tt}",
            "stride_l": "i32", "n_cols": "i32", "scale": "fp32",
            "ignore_index": "i32", "HAS_GRAD": "constexpr", "BLOCK": "constexpr",
        }  # fmt: skip
        const = {"HAS_GRAD": has_grad, "BLOCK": cfg["BLOCK"]}
        label = f"cross_entropy_fwd V={v} {dt} target={tt} grad={has_grad}"
        yield label, _cross_entropy_fwd_kernel, sig, const, {"num_warps": cfg["num_warps"]}
