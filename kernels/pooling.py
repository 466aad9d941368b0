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
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "weighted_mean", "last_token", "bos_token")


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
