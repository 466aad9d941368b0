"""The model's linear layers on the CPU: oneDNN's float32 GEMM instead of MKL's.

PyTorch's CPU build sends ``F.linear`` in float32 to MKL's sgemm. On the AMD EPYC machines this
project runs on, MKL takes a generic code path (it dispatches its fast kernels by CPU vendor),
and oneDNN, which PyTorch also ships (``torch.ops.mkldnn._linear_pointwise``, the op inductor's
CPU fusions call), runs the same float32 products 2.2-2.4x faster on dense tensors: 1024 x 576
by 576 x 1536, 2 cores, AMD EPYC family 26, 221 against 522 GFLOP/s (``bench/NOTES.md``). Both
are IEEE float32 GEMMs; only the order of the additions differs.

:class:`Linear` is ``nn.Linear`` (same parameters and names, so checkpoints, PEFT's LoRA
wrapping and merging treat it as one) whose forward takes oneDNN where :func:`use_onednn` says
so: float32 CPU tensors of two dimensions, no gradient being recorded (the op has no autograd
formula; training keeps ``F.linear``), and ``LLM2VEC_FAST_CPU_GEMM`` not set to ``mkl``.
Everything else is ``F.linear``, the reference.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "linear", "use_onednn"]

# Read once: one process uses one GEMM library for the model's linear layers.
_WANTED = os.environ.get("LLM2VEC_FAST_CPU_GEMM", "onednn").strip().lower()
_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` goes to oneDNN: both float32 on the CPU, ``x`` 2-D with rows,
    no gradient recorded, oneDNN in this torch build, and not turned off
    (``LLM2VEC_FAST_CPU_GEMM=mkl``)."""
    return (
        _AVAILABLE
        and _WANTED != "mkl"
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN where :func:`use_onednn`, else ``F.linear``."""
    if use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
