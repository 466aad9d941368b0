"""Shared pieces of the CUDA kernel tests (tests/test_kernels_gpu*.py).

- :data:`COMPILED_ON_GPU`: the module marks, ``gpu`` and skipped under ``TRITON_INTERPRET=1``;
- :func:`cu_seqlens`: :func:`.packed.cu_seqlens` on the device;
- :func:`randn_heads`, :func:`attention_case`: random ``[T, heads, d]`` tensors on the device.
"""

from __future__ import annotations

import os

import pytest
import torch

from l2vf_support import packed

DEVICE = "cuda"

COMPILED_ON_GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="compiled kernels only (no interpreter)"
    ),
]


def cu_seqlens(lengths) -> torch.Tensor:
    """int32 ``[n + 1]`` cumulative lengths on the device."""
    return packed.cu_seqlens(lengths, DEVICE)


def randn_heads(total, heads, d, dtype, seed) -> list[torch.Tensor]:
    """One ``[total, h, d]`` standard normal tensor on the device for each ``h`` of ``heads``,
    drawn in that order from a device generator seeded with ``seed``."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(total, h, d, device=DEVICE, dtype=dtype, generator=g) for h in heads]


def attention_case(dtype, hq, hkv, d, lengths, seed):
    """(q ``[T, hq, d]``, k, v ``[T, hkv, d]``, dO ``[T, hq, d]``, cu_seqlens, max length)."""
    q, k, v, do = randn_heads(sum(lengths), (hq, hkv, hkv, hq), d, dtype, seed)
    return q, k, v, do, cu_seqlens(lengths), max(lengths)
