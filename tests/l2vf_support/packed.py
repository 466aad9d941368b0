"""Packed batches of mixed text lengths for the attention tests (interpreter and GPU).

- :func:`mixed_lengths`, :func:`cu_seqlens`: the texts' lengths and their cumulative offsets;
- :func:`per_text_attention`, :func:`eager_probs`: reference attention, one text at a time;
- :func:`run_qkv`: an attention's output and q/k/v gradients;
- :func:`small_tiles`: flash-attention tiles small enough for the interpreter.
"""

from __future__ import annotations

import math

import torch


def mixed_lengths(seed: int = 0, short: int = 48, long: int = 3) -> list[int]:
    """``short`` texts of 1-96 tokens and ``long`` of 512, plus odd lengths at the block edges
    (1, 127, 129, 255) and one empty text, shuffled: the mixed batch of an encode call."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 97, (short,), generator=g).tolist()
    lengths += [512] * long + [1, 127, 129, 255, 0]
    order = torch.randperm(len(lengths), generator=g).tolist()
    return [lengths[i] for i in order]


def cu_seqlens(lengths, device="cpu") -> torch.Tensor:
    """int32 ``[n + 1]`` cumulative lengths on ``device``."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu.to(device)


def per_text_attention(q, k, v, lengths, attend):
    """q ``[T, Hq, D]``, k, v ``[T, Hkv, D]`` of texts of ``lengths``: for each non-empty text,
    ``attend(qs, ks, vs, start, n)`` on its ``[Hq, n, D]`` q, k and v (k, v repeated to q's
    heads), the results concatenated to ``[T, Hq, D]``."""
    groups = q.shape[1] // k.shape[1]
    outs, s = [], 0
    for n in lengths:
        if n:
            qs, ks, vs = (x[s : s + n].transpose(0, 1) for x in (q, k, v))
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
            outs.append(attend(qs, ks, vs, s, n).transpose(0, 1))
        s += n
    return torch.cat(outs) if outs else q[:0] * 0


def eager_probs(qs, ks, scale, causal):
    """``softmax(qs ks^T * scale)`` of one text's ``[H, n, D]`` q and k, causal where asked."""
    w = qs @ ks.transpose(1, 2) * scale
    if causal:
        n = qs.shape[1]
        w = w.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return w.softmax(-1)


def run_qkv(fn, q, k, v, do):
    """Output and (dq, dk, dv) of ``fn`` at leaf copies of q, k, v, for the output gradient
    ``do``."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    out.backward(do.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


def small_tiles():
    """Flash tiles with BLOCK_M != BLOCK_N (fwd 32 x 16, dK/dV 16 x 32, dQ 32 x 16): several
    query blocks per text, causal diagonals that cut through blocks, the dK/dV query loop
    starting mid-text."""
    from llm2vec_fast.kernels.flash_varlen import FlashTiles

    return FlashTiles(
        BLOCK_D=16, BLOCK_M=32, BLOCK_N=16, fwd_warps=4, fwd_stages=1,  # forward
        BLOCK_M1=16, BLOCK_N1=32, dkdv_warps=4,  # dK/dV
        BLOCK_M2=32, BLOCK_N2=16, dq_warps=4, bwd_stages=1, PRE_BLOCK=16,  # dQ, shared
    )  # fmt: skip
