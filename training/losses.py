"""Training losses: MNTP's linear + cross-entropy without the full logits, and the contrastive
loss of SimCSE and supervised training.

:func:`linear_cross_entropy` computes ``F.cross_entropy(x @ W.T, y)`` chunk by chunk over the
rows of ``x``: one ``[chunk, vocab]`` block of logits is alive at a time, never the whole
``[tokens, vocab]`` matrix, so memory stays flat at a 128k vocabulary. As in Liger-Kernel's fused
linear cross-entropy, the gradients are computed in the forward pass, block by block (softmax
minus the one-hot target, times ``W`` for the input and, when ``W`` is trained, accumulated into
its gradient), and the backward pass only scales them: no logits are recomputed or stored.

The matmuls are torch's (cuBLAS on a GPU). The softmax step between them is the Triton kernel of
:mod:`llm2vec_fast.kernels.cross_entropy` for CUDA tensors (or under ``TRITON_INTERPRET=1``): it
reads the block in the matmul's dtype (bf16 for a bf16 model, float32 math inside) and writes the
gradient over it, so the block is the only ``[chunk, vocab]`` buffer. Elsewhere
:func:`~llm2vec_fast.kernels.cross_entropy.cross_entropy_grad_ref` makes the gradient from the
block in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm2vec_fast.kernels import use_triton
from llm2vec_fast.kernels.cross_entropy import (
    KERNEL_DTYPES,
    cross_entropy_fwd,
    cross_entropy_grad_ref,
)

IGNORE_INDEX = -100
_CHUNK_BYTES = 256 << 20  # the logits block per chunk, counted as float32
# torch.addmm(..., out_dtype=torch.float32): bf16/fp16 products summed into a float32 gradient
_ADDMM_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype_out")


def _chunk_rows(vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive; got {chunk_size}")
        return chunk_size
    return max(16, _CHUNK_BYTES // (4 * max(vocab, 1)))


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for a float32 ``acc``, whatever ``a``'s dtype (``b`` follows ``a``)."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b.float())
    elif (
        _ADDMM_OUT_DTYPE
        and a.is_cuda
        and a.dtype in (torch.float16, torch.bfloat16)
        and torch.cuda.get_device_capability(a.device)[0] >= 8
    ):  # summed in float32 by cuBLAS, no low-precision [V, H] temporary (as Liger-Kernel)
        torch.addmm(acc, a, b.to(a.dtype), out_dtype=torch.float32, out=acc)
    else:
        acc += (a @ b.to(a.dtype)).float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, target, chunk, ignore_index):
        n, vocab = x.shape[0], weight.shape[0]
        valid = target != ignore_index
        bad = valid & ((target < 0) | (target >= vocab))
        count, n_bad = (int(v) for v in torch.stack([valid.sum(), bad.sum()]).tolist())
        if n_bad:
            raise ValueError(
                f"{n_bad} targets lie outside [0, {vocab}) and are not ignore_index={ignore_index}"
            )
        need_x, need_w, need_b = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            (bias is not None and ctx.needs_input_grad[2]),
        )
        need_grad = need_x or need_w or need_b
        tensors = (x, weight, target) + ((bias,) if bias is not None else ())
        on_triton = use_triton(*tensors)
        w = weight.to(x.dtype)
        b = bias.to(x.dtype) if bias is not None else None
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=x.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        scale = 1.0 / max(count, 1)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            xs, ts = x[s:e], target[s:e]
            # d loss / d logits = (softmax - onehot) / count on valid rows, 0 on the others
            if on_triton:
                # the [c, V] block in the matmul's dtype; the kernel writes the gradient over it
                grad = F.linear(xs, w, b)
                if grad.dtype not in KERNEL_DTYPES:  # float64
                    grad = grad.float()
                rows = cross_entropy_fwd(grad, ts, scale, ignore_index, compute_grad=need_grad)
            else:  # float32 logits, freed once the reference has made the gradient
                rows, grad = cross_entropy_grad_ref(
                    F.linear(xs, w, b).float(), ts, scale, ignore_index
                )
            total += rows.sum()
            if need_x:
                grad_x[s:e] = grad.to(x.dtype) @ w
            if need_w:
                _addmm_f32(grad_w, grad.t(), xs)
            if need_b:
                grad_b += grad.sum(0, dtype=torch.float32)
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_x, grad_w, grad_b))
        )
        ctx.has = (need_x, need_w, need_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        gx, gw, gb = ctx.saved_tensors
        need_x, need_w, need_b = ctx.has
        return (
            gx * grad_out.to(gx.dtype) if need_x else None,
            (gw * grad_out).to(ctx.dtypes[0]) if need_w else None,
            (gb * grad_out).to(ctx.dtypes[1]) if need_b else None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T (+ bias)`` against ``target`` over the rows whose
    target is not ``ignore_index``; equal to ``F.cross_entropy(x @ weight.T, target)`` in value
    and gradient (softmax in float32 over the logits as the matmul rounds them), with one
    ``[chunk_size, vocab]`` block at most alive at once (default: 256 MiB worth of float32 rows;
    on the Triton path the block stays in x's dtype when that is bf16/fp16, so half that).
    ``x [N, H]``, ``weight [V, H]``, ``target [N]`` int, each in [0, V) or ``ignore_index``
    (anything else raises ``ValueError``). Returns 0 (with zero gradients) when no row counts."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x must be [N, H] and weight [V, H]; got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    if target.shape != (x.shape[0],):
        raise ValueError(f"target must be [N] = [{x.shape[0]}]; got {tuple(target.shape)}")
    chunk = _chunk_rows(weight.shape[0], chunk_size)
    return _LinearCrossEntropy.apply(x, weight, bias, target, chunk, ignore_index)


def mntp_loss(
    hidden: torch.Tensor,
    lm_head: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Masked next token prediction over a packed batch: the label at position ``i`` (the
    original token where the input was masked, ``-100`` elsewhere) is predicted from the
    output at ``i - 1`` of the same text. A text's first position has no prediction (no
    text is predicted from its neighbour). Returns (mean loss over the predicted tokens, count).
    """
    starts = torch.zeros_like(labels, dtype=torch.bool)
    firsts = cu_seqlens[:-1].long()
    firsts = firsts[firsts < labels.shape[0]]
    starts[firsts] = True
    target_pos = torch.nonzero((labels != IGNORE_INDEX) & ~starts).squeeze(1)
    if target_pos.numel() == 0:
        return hidden.sum() * 0.0, 0
    loss = linear_cross_entropy(
        hidden[target_pos - 1], lm_head, labels[target_pos], chunk_size=chunk_size
    )
    return loss, int(target_pos.numel())


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, d] x [m, d] -> [n, m]`` cosine similarities."""
    return F.normalize(a, p=2, dim=1) @ F.normalize(b, p=2, dim=1).t()


def _gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, with gradients flowing back to each rank's own rows (equal row counts
    on every rank; torch.distributed.nn's differentiable all_gather)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(t.contiguous()), dim=0)


def contrastive_loss(
    q: torch.Tensor,
    d_pos: torch.Tensor,
    d_neg: torch.Tensor | None = None,
    *,
    scale: float = 20.0,
    gather: bool = True,
) -> torch.Tensor:
    """The LLM2Vec contrastive loss (the official ``HardNegativeNLLLoss``): for query ``i``,
    cross-entropy of ``scale * cos(q_i, d)`` over the documents ``d`` = every positive of the
    batch, then every hard negative, with ``d_pos[i]`` the right one. Under
    ``torch.distributed`` the queries and documents of every rank are gathered first (so every
    rank's documents are negatives for every query). SimCSE: ``d_pos`` is the same texts under
    other dropout, scale 20; supervised: scale 50."""
    if gather:
        q, d_pos = _gather(q), _gather(d_pos)
        d_neg = _gather(d_neg) if d_neg is not None else None
    docs = d_pos if d_neg is None else torch.cat([d_pos, d_neg], dim=0)
    scores = cos_sim(q.float(), docs.float()) * scale
    labels = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(scores, labels)
