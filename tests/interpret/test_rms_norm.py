"""RMSNorm Triton kernels under the interpreter against the PyTorch reference.

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
from llm2vec_fast.kernels import rms_norm, rms_norm_ref  # noqa: E402
from llm2vec_fast.kernels._launch import use_triton  # noqa: E402

DTYPES = interpreter_dtypes()
SHAPES = [(1, 64), (7, 123), (97, 64), (5, 576)]


pytestmark = pytest.mark.usefixtures("seed_from_test_name")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rms_norm(shape, dtype, atol, rtol, gemma):
    t, h = shape
    eps = 1e-6
    x = torch.randn(t, h) * 2 + 0.5
    w = torch.randn(h) * 0.2 + (0.0 if gemma else 1.0)
    dy = torch.randn(t, h)
    assert use_triton(x)

    out = grads(lambda a, b: rms_norm(a, b, eps, gemma), (x.to(dtype), w.to(dtype)), dy)
    ref = grads(lambda a, b: rms_norm_ref(a, b, eps, gemma), (x.to(dtype), w.to(dtype)), dy)
    ref64 = grads(lambda a, b: rms_norm_ref(a, b, eps, gemma), (x.double(), w.double()), dy)

    assert out[0].dtype == dtype and out[0].shape == (t, h)
    assert out[1].dtype == dtype and out[2].dtype == dtype
    assert_close(out[0], ref[0], atol=atol, rtol=rtol)
    for name, o, r, r64 in zip(("y", "dx", "dweight"), out, ref, ref64):
        assert_close_2x(o, r, r64, atol, rtol, name)


def test_rms_norm_leading_dims_and_float32_weight():
    """[..., H] input; a float32 weight with float16 x promotes the Llama output (as torch);
    dx comes back in x's dtype, dweight in the weight's."""
    x = (torch.randn(2, 3, 123) * 2).half()
    w = torch.randn(123) * 0.2 + 1.0
    dy = torch.randn(2, 3, 123)
    out = grads(lambda a, b: rms_norm(a, b, 1e-5), (x, w), dy)
    ref = grads(lambda a, b: rms_norm_ref(a, b, 1e-5), (x, w), dy)
    ref64 = grads(lambda a, b: rms_norm_ref(a, b, 1e-5), (x.double(), w.double()), dy)
    assert out[0].shape == (2, 3, 123) and out[0].dtype == ref[0].dtype == torch.float32
    assert out[1].dtype == torch.float16 and out[2].dtype == torch.float32
    assert_close(out[0], ref[0], atol=1e-5, rtol=1.3e-6)
    for name, o, r, r64 in zip(("y", "dx", "dweight"), out, ref, ref64):
        assert_close_2x(o, r, r64, 1e-3, 1e-3, name)
