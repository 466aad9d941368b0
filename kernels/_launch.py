"""Launch helpers shared by every Triton kernel: when to use Triton, block sizes, contiguity.

One module, so no kernel file carries its own copy.
"""

from __future__ import annotations

import os

import torch

try:  # triton is an optional dependency (the `gpu` extra); CPU installs may lack it
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised on installs without triton
    HAVE_TRITON = False

# Read once, like triton itself does when a kernel is decorated: one process runs either
# interpreted or compiled kernels.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when these tensors should go to the Triton kernel: triton is installed and they are
    CUDA tensors, or ``TRITON_INTERPRET=1`` (then CPU tensors run the kernel interpreted)."""
    if not HAVE_TRITON:
        return False
    if INTERPRET:
        return True
    return all(t.is_cuda for t in tensors)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def contiguous(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor made contiguous (a no-op for ones that already are)."""
    return tuple(t if t.is_contiguous() else t.contiguous() for t in tensors)


def last_dim_contiguous(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor with a unit stride in its last dim (copied only where it has none): what the
    attention kernels need, whose other strides are free."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def num_warps_for(block: int) -> int:
    """A warp count for a row-wise kernel whose row block is ``block`` elements."""
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4
