"""Dropout seeds of the attention kernels: how a seed becomes the kernels' Philox key, and how a
fresh seed is drawn from torch's generators.

A dropout mask is a function of ``(seed, offset)`` only: the Triton kernels regenerate it from
the key in the backward (:mod:`llm2vec_fast.kernels.flash_varlen`), and the PyTorch path draws it
from a generator seeded with :func:`torch_seed` (:mod:`llm2vec_fast.kernels.attention`).
"""

from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1
# the kernels' seed argument when dropout is off (unused; an int64 like every real key)
NO_KEY = 1 << 32


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser of ``x`` (a 64-bit integer hash)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def philox_key(seed: int) -> int:
    """The kernels' Philox key for ``seed``: its 64 bits hashed (splitmix64), bit 63 cleared and
    bit 32 set, so Triton always passes it as an int64 (small and large seeds share one
    compiled kernel)."""
    return (splitmix64(int(seed) & MASK64) & ((1 << 63) - 1)) | (1 << 32)


def torch_seed(seed: int, offset: int) -> int:
    """A torch generator seed (in [0, 2**63)) for the stream ``offset`` of ``seed``."""
    return splitmix64(int(seed) ^ splitmix64(int(offset))) & ((1 << 63) - 1)


def check_dropout(dropout_p: float, seed: int | None, offset: int) -> float:
    """``dropout_p`` as a float after checking the three arguments (a clear ValueError)."""
    p = float(dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if p > 0.0:
        if seed is None:
            raise ValueError("dropout_p > 0 needs a seed (flash_varlen_attention draws one)")
        if not 0 <= int(offset) < 1 << 32:
            raise ValueError(f"offset must be in [0, 2**32), got {offset}")
    return p


def dropout_args(dropout_p: float, seed: int | None, offset: int) -> tuple[float, int, int, bool]:
    """(dropout_p, Philox key, offset as a signed 32-bit pattern, DROPOUT) for the kernels."""
    p = check_dropout(dropout_p, seed, offset)
    if p == 0.0:
        return 0.0, NO_KEY, 0, False
    offset = int(offset)
    # always an int32 argument: one compiled kernel for every offset
    return p, philox_key(seed), offset - (1 << 32) if offset >= 1 << 31 else offset, True


def draw_dropout_seed(device: torch.device | str) -> int:
    """A fresh dropout seed (an int in [0, 2**63)) from torch's default generator of ``device``.

    CUDA: a hash of the generator's (initial seed, Philox offset), whose offset is then advanced,
    the way torch's own CUDA dropout consumes it: no host-device sync, and ``torch.manual_seed``
    or a restored RNG state (gradient checkpointing) gives the same seed again. Other devices:
    ``torch.randint`` on the device's default generator.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        gen = torch.cuda.default_generators[index]
        try:
            base, off = gen.initial_seed(), gen.get_offset()
            gen.set_offset(off + 4)
            return splitmix64(base ^ splitmix64(off)) & ((1 << 63) - 1)
        except (AttributeError, RuntimeError):  # pragma: no cover - older torch
            pass
    return int(torch.randint(0, 1 << 62, (), dtype=torch.int64, device=device).item())
