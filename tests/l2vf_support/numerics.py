"""Judging low-precision kernel results (flash-attention's rule)."""

from __future__ import annotations


def assert_close_2x(out, ref, ref64, atol: float, rtol: float, what: str = "output") -> None:
    """Judge a low-precision result fairly (flash-attention's rule): ``out``'s error against the
    float64 reference ``ref64`` may be at most 2x the error of ``ref`` (the PyTorch reference in
    ``out``'s dtype) plus ``atol``/``rtol``. On failure the message says how many elements
    differ, where, and by how much (``torch.testing.assert_close``)."""
    from torch.testing import assert_close

    ref_err = (ref.double() - ref64).abs().max().item()
    assert_close(
        out.double(),
        ref64,
        atol=2 * ref_err + atol,
        rtol=rtol,
        msg=lambda m: f"{what} ({out.dtype}, reference error {ref_err:.3g}): {m}",
    )


def interpreter_dtypes():
    """``(dtype, atol, rtol)`` parameters of the elementwise interpreter tests: the floor for
    each dtype (bf16 is wrong in the interpreter)."""
    import pytest
    import torch

    return [
        pytest.param(torch.float32, 1e-5, 1.3e-6, id="fp32"),
        pytest.param(torch.float16, 1e-3, 1e-3, id="fp16"),
    ]


def grads(fn, inputs, dy):
    """``(fn(*inputs), *d/d inputs)`` for the upstream gradient ``dy``, on fresh leaf copies."""
    import torch

    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, dy.to(out.dtype)))
