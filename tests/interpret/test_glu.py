"""Gated activation (SwiGLU / tanh-GeGLU) Triton kernels under the interpreter.

Run: ``TRITON_INTERPRET=1 python -m pytest tests/interpret -q`` (skipped in any other process).
Outputs are compared with the reference in the same dtype; outputs and gradients are judged
against a float64 reference: the kernel's error must be at most 2x the same-dtype reference's
error, plus a floor.
"""

from __future__ import annotations

import pytest
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from l2vf_support.numerics import assert_close_2x, grads, interpreter_dtypes  # noqa: E402
from llm2vec_fast.kernels import gated_act, gated_act_ref  # noqa: E402
from llm2vec_fast.kernels._launch import use_triton  # noqa: E402
from llm2vec_fast.kernels.glu import ACTIVATIONS  # noqa: E402

DTYPES = interpreter_dtypes()
SHAPES = [(1, 64), (7, 123), (97, 64), (3, 1500)]  # 1500: two column blocks, the last partial


pytestmark = pytest.mark.usefixtures("seed_from_test_name")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gated_act(shape, dtype, atol, rtol, activation):
    gate = torch.randn(shape) * 3  # reaches the saturated tails of both activations
    up = torch.randn(shape)
    dy = torch.randn(shape)
    assert use_triton(gate)

    def fn(impl):
        return lambda g, u: impl(g, u, activation)

    out = grads(fn(gated_act), (gate.to(dtype), up.to(dtype)), dy)
    ref = grads(fn(gated_act_ref), (gate.to(dtype), up.to(dtype)), dy)
    ref64 = grads(fn(gated_act_ref), (gate.double(), up.double()), dy)

    assert all(o.dtype == dtype and o.shape == shape for o in out)
    assert_close(out[0], ref[0], atol=atol, rtol=rtol)
    for name, o, r, r64 in zip(("y", "dgate", "dup"), out, ref, ref64):
        assert_close_2x(o, r, r64, atol, rtol, name)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gated_act_halves_of_fused_gate_up(activation):
    """gate and up as the two halves of one [T, 2I] projection (row stride 2I), 3-D input."""
    gu = torch.randn(2, 5, 2 * 123, requires_grad=True)
    dy = torch.randn(2, 5, 123)
    out = gated_act(gu[..., :123], gu[..., 123:], activation)
    (g_out,) = torch.autograd.grad(out, gu, dy)
    gu_ref = gu.detach().clone().requires_grad_()
    ref = gated_act_ref(gu_ref[..., :123], gu_ref[..., 123:], activation)
    (g_ref,) = torch.autograd.grad(ref, gu_ref, dy)
    assert_close(out, ref, atol=1e-5, rtol=1.3e-6)
    assert_close(g_out, g_ref, atol=1e-5, rtol=1.3e-6)


def test_gated_act_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation"):
        gated_act(torch.randn(2, 4), torch.randn(2, 4), "relu")
