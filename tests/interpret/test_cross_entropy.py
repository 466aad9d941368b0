"""The cross-entropy Triton kernel under the interpreter against its PyTorch reference, and
``linear_cross_entropy`` through it against ``F.cross_entropy(x @ W.T, y)``.

Run: ``TRITON_INTERPRET=1 python -m pytest tests/interpret -q`` (skipped in any other process).
Losses and gradients are judged against a float64 reference: the kernel's error must be at most
2x the error of the reference run on the same logits in their own dtype, plus a floor.
"""

from __future__ import annotations

import pytest
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import llm2vec_fast.training.losses as losses_mod  # noqa: E402
from l2vf_support.numerics import assert_close_2x  # noqa: E402
from llm2vec_fast.kernels._launch import use_triton  # noqa: E402
from llm2vec_fast.kernels.cross_entropy import (  # noqa: E402
    cross_entropy_fwd,
    cross_entropy_grad_ref,
)
from llm2vec_fast.training import linear_cross_entropy  # noqa: E402

DTYPES = [  # (dtype, atol, rtol): the floor for each dtype (bf16 is wrong in the interpreter)
    pytest.param(torch.float32, 1e-6, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-4, 1e-3, id="fp16"),
]
VOCABS = (1, 7, 97, 1000, 50257)  # 50257: 12 full blocks of 4096 and a tail of 1105
IGNORE = -100


pytestmark = pytest.mark.usefixtures("seed_from_test_name")


def _targets(n: int, vocab: int) -> torch.Tensor:
    """Random classes with the edges 0 and V-1 present, and rows 1 and n-1 ignored."""
    y = torch.randint(0, vocab, (n,))
    y[0], y[2 % n] = 0, vocab - 1
    y[1 % n] = IGNORE
    y[-1] = IGNORE
    return y


def _check(logits: torch.Tensor, y: torch.Tensor, scale: float, atol: float, rtol: float):
    """Kernel (in place on a copy) vs the reference in logits' dtype and in float64."""
    out = logits.clone()
    loss = cross_entropy_fwd(out, y, scale, IGNORE)
    ref_loss, ref_grad = cross_entropy_grad_ref(logits, y, scale, IGNORE)
    ref64_loss, ref64_grad = cross_entropy_grad_ref(logits.double(), y, scale, IGNORE)
    assert loss.dtype == torch.float32 and loss.shape == y.shape
    assert out.dtype == logits.dtype and ref_grad.dtype == logits.dtype
    assert_close_2x(loss, ref_loss, ref64_loss, atol, rtol, "loss")
    assert_close_2x(out, ref_grad, ref64_grad, atol * scale, rtol, "grad")
    ignored = y == IGNORE
    assert (loss[ignored] == 0).all() and (out[ignored] == 0).all()
    return loss, out


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("vocab", VOCABS)
def test_kernel_matches_reference(vocab, dtype, atol, rtol):
    n = 6 if vocab > 1000 else 13
    logits = (torch.randn(n, vocab) * 3 + 1).to(dtype)
    y = _targets(n, vocab)
    count = int((y != IGNORE).sum())
    _check(logits, y, 1.0 / count, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_scale_int32_targets_and_row_stride(dtype, atol, rtol):
    """Any scale; int32 targets; rows of a wider buffer (row stride > V), whose padding the
    kernel must not touch."""
    buf = (torch.randn(9, 4100 + 37) * 4).to(dtype)
    logits = buf[:, :4100]
    y = _targets(9, 4100).to(torch.int32)
    before = buf.clone()
    ref_loss, ref_grad = cross_entropy_grad_ref(logits, y, 0.37, IGNORE)
    ref64_loss, ref64_grad = cross_entropy_grad_ref(logits.double(), y, 0.37, IGNORE)
    loss = cross_entropy_fwd(logits, y, 0.37, IGNORE)
    assert_close_2x(loss, ref_loss, ref64_loss, atol, rtol, "loss")
    assert_close_2x(logits, ref_grad, ref64_grad, atol, rtol, "grad")
    assert torch.equal(buf[:, 4100:], before[:, 4100:])


def test_without_gradient_the_logits_stay():
    logits = torch.randn(5, 300) * 2
    y = _targets(5, 300)
    kept = logits.clone()
    loss = cross_entropy_fwd(logits, y, 0.5, IGNORE, compute_grad=False)
    assert torch.equal(logits, kept)
    ref64_loss, _ = cross_entropy_grad_ref(logits.double(), y, 0.5, IGNORE)
    torch.testing.assert_close(loss.double(), ref64_loss, atol=1e-6, rtol=1e-5)


def test_minus_infinity_logits():
    """A masking bias: -inf over a whole first block and scattered elsewhere; the loss and the
    gradient stay finite (d must not become NaN while every logit seen so far is -inf)."""
    logits = torch.randn(4, 5000) * 2
    logits[:, :4096] = float("-inf")
    logits[:, 4500:4600] = float("-inf")
    y = torch.tensor([4096, 4999, IGNORE, 4400])
    loss, grad = _check(logits, y, 1.0 / 3, 1e-6, 1e-5)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (grad[:, :4096] == 0).all()


def test_bad_target_and_empty():
    logits = torch.randn(3, 50)
    y = torch.tensor([3, 50, -7])
    loss = cross_entropy_fwd(logits.clone(), y, 1.0, IGNORE)
    assert torch.isfinite(loss[0]) and loss[1:].isnan().all()  # no out-of-bounds read
    with pytest.raises(ValueError, match="targets must lie in"):
        cross_entropy_grad_ref(logits, y, 1.0, IGNORE)
    empty = cross_entropy_fwd(torch.empty(0, 50), torch.empty(0, dtype=torch.long), 1.0)
    assert empty.shape == (0,)


# ---------------------------------------------------------------- linear_cross_entropy


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the kernel launches made by linear_cross_entropy (so a test knows it ran)."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return cross_entropy_fwd(*args, **kwargs)

    monkeypatch.setattr(losses_mod, "cross_entropy_fwd", spy)
    return calls


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "n, vocab, chunk", [(1, 7, 1), (37, 101, 5), (50, 1000, 16), (23, 97, None)]
)
@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen_w", "train_w"])
def test_linear_cross_entropy_through_triton(
    n, vocab, chunk, train_weight, dtype, atol, rtol, kernel_calls
):
    hidden = 24
    x = torch.randn(n, hidden)
    w = torch.randn(vocab, hidden) / hidden**0.5
    b = torch.randn(vocab) * 0.1
    y = torch.randint(0, vocab, (n,))
    y[torch.rand(n) < 0.3] = IGNORE
    assert use_triton(x)

    def run(fn, dt):
        leaves = [t.to(dt).requires_grad_(i == 0 or train_weight) for i, t in enumerate((x, w, b))]
        loss = fn(*leaves)
        wrt = leaves if train_weight else leaves[:1]
        return (loss, *torch.autograd.grad(loss * 1.7, wrt))

    ours = run(lambda a, c, d: linear_cross_entropy(a, c, y, d, chunk_size=chunk), dtype)
    assert kernel_calls and max(s[0] for s in kernel_calls) <= (chunk or n)

    def torch_ce(a, c, d):  # the full logits in a's dtype, softmax in float32 (float64)
        return F.cross_entropy(F.linear(a, c, d).to(torch.promote_types(a.dtype, torch.float32)), y)

    ref = run(torch_ce, dtype)
    ref64 = run(torch_ce, torch.float64)
    assert ours[0].dtype == torch.float32
    if (y == IGNORE).all():
        assert float(ours[0].detach()) == 0.0 and all((g == 0).all() for g in ours[1:])
        return
    for name, o, r, r64 in zip(("loss", "dx", "dw", "db"), ours, ref, ref64):
        assert o.dtype == (torch.float32 if name == "loss" else dtype)
        assert_close_2x(o, r, r64, atol, rtol, name)


def test_linear_cross_entropy_rejects_bad_targets(kernel_calls):
    x, w = torch.randn(4, 8), torch.randn(11, 8)
    for bad in (11, -3):
        with pytest.raises(ValueError, match="targets lie outside"):
            linear_cross_entropy(x, w, torch.tensor([0, 1, bad, IGNORE]))
    assert not kernel_calls
