"""Segment pooling Triton kernels under the interpreter against the PyTorch reference.

Run: ``TRITON_INTERPRET=1 python -m pytest tests/interpret -q`` (skipped in any other process).
Outputs are compared with the reference in the same dtype; outputs and gradients are judged
against a float64 reference: the kernel's error must be at most 2x the same-dtype reference's
error, plus a floor.
"""

from __future__ import annotations

import pytest
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from l2vf_support.numerics import assert_close_2x, interpreter_dtypes  # noqa: E402
from llm2vec_fast.kernels import POOLING_MODES, segment_pool, segment_pool_ref  # noqa: E402
from llm2vec_fast.kernels._launch import use_triton  # noqa: E402

DTYPES = interpreter_dtypes()
# text lengths of one packed batch; the texts marked * have no masked token (mean falls back to
# the whole text, weighted_mean gives zeros); 0 is an empty text (mean / weighted_mean only)
LENGTHS = (1, 7, 97, 5, 33, 0, 2)
UNMASKED = (3, 5)  # *: indices into LENGTHS


pytestmark = pytest.mark.usefixtures("seed_from_test_name")


def _batch(mode: str, h: int, p: float = 0.5):
    """(hidden [T, h] float32, cu_seqlens int32, pool_mask bool [T]) valid for ``mode``."""
    lengths = [n for n in LENGTHS if n or mode in ("mean", "weighted_mean")]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    hidden = torch.randn(int(cu[-1]), h) * 2 + 0.5
    mask = torch.rand(int(cu[-1])) < p
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e == s:
            continue
        if mode == "bos_token":  # exactly one masked token, anywhere (not only the first)
            mask[s:e] = False
            mask[s + int(torch.randint(e - s, ()))] = True
        elif LENGTHS.index(e - s) in UNMASKED:
            mask[s:e] = False
    return hidden, cu, mask


def _grads(fn, hidden, d_out):
    leaf = hidden.detach().clone().requires_grad_()
    out = fn(leaf)
    return out, *torch.autograd.grad(out, leaf, d_out.to(out.dtype))


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("h", [33, 123])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_segment_pool(mode, h, dtype, atol, rtol):
    hidden, cu, mask = _batch(mode, h)
    d_out = torch.randn(cu.numel() - 1, h)
    assert use_triton(hidden)

    out = _grads(lambda x: segment_pool(x, cu, mask, mode), hidden.to(dtype), d_out)
    ref = _grads(lambda x: segment_pool_ref(x, cu, mask, mode), hidden.to(dtype), d_out)
    ref64 = _grads(lambda x: segment_pool_ref(x, cu, mask, mode), hidden.double(), d_out)

    assert out[0].dtype == torch.float32 and out[0].shape == (cu.numel() - 1, h)
    assert out[1].dtype == dtype and out[1].shape == hidden.shape
    assert_close(out[0], ref[0], atol=atol, rtol=rtol)
    for name, o, r, r64 in zip(("out", "d_hidden"), out, ref, ref64):
        assert_close_2x(o, r, r64, atol, rtol, name)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_segment_pool_float64_strided_uint8_mask(mode):
    """float64 stays float64; a row-strided hidden (a column slice) and a uint8 mask work."""
    hidden, cu, mask = _batch(mode, 123)
    wide = torch.randn(hidden.shape[0], 160, dtype=torch.float64)
    wide[:, :123] = hidden.double()
    d_out = torch.randn(cu.numel() - 1, 123, dtype=torch.float64)
    out = _grads(lambda x: segment_pool(x[:, :123], cu, mask.to(torch.uint8), mode), wide, d_out)
    ref = _grads(lambda x: segment_pool_ref(x[:, :123], cu, mask, mode), wide, d_out)
    assert out[0].dtype == torch.float64 and out[1].dtype == torch.float64
    for o, r in zip(out, ref):
        assert_close(o, r, atol=1e-12, rtol=1e-12)


def test_mean_fallback_and_weighted_zeros():
    """Spelled out: a text with nothing masked pools its whole text under mean and is zero under
    weighted_mean; the ranks of weighted_mean are 1..n over the masked tokens."""
    hidden = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    mask = torch.tensor([False, False, True, False, True, True])
    mean = segment_pool(hidden, cu, mask, "mean")
    assert_close(mean, torch.tensor([[1.0, 2.0], [(4 + 8 + 10) / 3, (5 + 9 + 11) / 3]]))
    wmean = segment_pool(hidden, cu, mask, "weighted_mean")
    assert_close(wmean, torch.tensor([[0.0, 0.0], [(4 + 2 * 8 + 3 * 10) / 6, (5 + 18 + 33) / 6]]))


def test_errors_before_launch():
    hidden, cu, _ = _batch("mean", 33)
    mask = torch.ones(hidden.shape[0], dtype=torch.bool)
    mask[cu[1] : cu[2]] = False  # text 1 has no BOS (and text 5 is empty)
    with pytest.raises(ValueError, match="text 1 of the batch contains no BOS token"):
        segment_pool(hidden, cu, mask, "bos_token")
    with pytest.raises(ValueError, match="at least one token"):
        segment_pool(hidden, cu, mask, "last_token")  # the empty text
    with pytest.raises(ValueError, match="unknown pooling mode"):
        segment_pool(hidden, cu, mask, "max")
    with pytest.raises(ValueError, match="pool_mask must be"):
        segment_pool(hidden, cu, mask[:-1], "mean")
