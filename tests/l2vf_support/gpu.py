"""Shared pieces of the CUDA kernel tests (tests/test_kernels_gpu*.py).

- :data:`COMPILED_ON_GPU`: the module marks, ``gpu`` and skipped under ``TRITON_INTERPRET=1``;
- :func:`mixed_lengths`, :func:`cu_seqlens`: a packed batch of mixed text lengths;
- :func:`randn_heads`, :func:`attention_case`: random ``[T, heads, d]`` tensors on the device.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda"

COMPILED_ON_GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="compiled kernels only (no interpreter)"
    ),
]


def mixed_lengths(seed: int = 0, short: int = 48, long: int = 3) -> list[int]:
    """``short`` texts of 1-96 tokens and ``long`` of 512, plus odd lengths at the block edges
    (1, 127, 129, 255) and one empty text, shuffled: the mixed batch of an encode call."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 97, (short,), generator=g).tolist()
    lengths += [512] * long + [1, 127, 129, 255, 0]
    order = torch.randperm(len(lengths), generator=g).tolist()
    return [lengths[i] for i in order]


def cu_seqlens(lengths, device=DEVICE) -> torch.Tensor:
    """int32 ``[n + 1]`` cumulative lengths on ``device``."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu.to(device)


def randn_heads(total, heads, d, dtype, seed) -> list[torch.Tensor]:
    """One ``[total, h, d]`` standard normal tensor on the device for each ``h`` of ``heads``,
    drawn in that order from a device generator seeded with ``seed``."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(total, h, d, device=DEVICE, dtype=dtype, generator=g) for h in heads]


def attention_case(dtype, hq, hkv, d, lengths, seed):
    """(q ``[T, hq, d]``, k, v ``[T, hkv, d]``, dO ``[T, hq, d]``, cu_seqlens, max length)."""
    q, k, v, do = randn_heads(sum(lengths), (hq, hkv, hkv, hq), d, dtype, seed)
    return q, k, v, do, cu_seqlens(lengths), max(lengths)
