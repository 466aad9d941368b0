"""The cross-entropy kernel and ``linear_cross_entropy`` on a CUDA GPU at a Llama-3 vocabulary
(V = 128256, N = 4096 rows), against PyTorch.

Every test is marked ``gpu`` and skipped without CUDA (and under ``TRITON_INTERPRET=1``). Results
are judged by flash-attention's rule (:func:`l2vf_support.numerics.assert_close_2x`): the error
against a float64 reference may be at most 2x the error of plain PyTorch on the same inputs in
the same dtype, plus a small floor. The float64 references are built a slice of rows at a time to
keep memory in bounds. The memory test checks the point of the chunked loss: its peak stays far
below the ``[N, V]`` float32 logits that ``F.cross_entropy(x @ W.T, y)`` materialises.

Run on the GPU machine: ``python -m pytest tests/test_kernels_gpu_cross_entropy.py -m gpu -q``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2vf_support.gpu import COMPILED_ON_GPU

pytestmark = COMPILED_ON_GPU

pytest.importorskip("triton")

from l2vf_support.gpu import DEVICE  # noqa: E402
from l2vf_support.numerics import assert_close_2x  # noqa: E402
from llm2vec_fast.kernels.cross_entropy import (  # noqa: E402
    cross_entropy_fwd,
    cross_entropy_grad_ref,
)
from llm2vec_fast.training import linear_cross_entropy  # noqa: E402

N, VOCAB, HIDDEN = 4096, 128_256, 2048
IGNORE = -100
SLICE = 512  # rows per float64 reference slice
# logits dtype with its floors (atol, rtol) for the 2x rule
DTYPES = [
    pytest.param(torch.bfloat16, 1e-5, 1e-2, id="bf16"),
    pytest.param(torch.float16, 1e-6, 1e-3, id="fp16"),
    pytest.param(torch.float32, 1e-6, 1e-5, id="fp32"),
]


def _targets(n: int, vocab: int, gen: torch.Generator, device) -> torch.Tensor:
    y = torch.randint(0, vocab, (n,), generator=gen, device=device)
    y[torch.rand(n, generator=gen, device=device) < 0.1] = IGNORE
    y[0], y[1], y[2] = 0, vocab - 1, IGNORE
    return y


def check_kernel(n, vocab, dtype, atol, rtol, device=DEVICE, seed=0):
    """Kernel on ``[n, vocab]`` logits in ``dtype`` vs the reference in that dtype and in
    float64 (slice by slice), and its mean loss vs ``F.cross_entropy``."""
    gen = torch.Generator(device).manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=gen, device=device) * 4).to(dtype)
    y = _targets(n, vocab, gen, device)
    count = int((y != IGNORE).sum())
    scale = 1.0 / count
    grad = logits.clone()
    loss = cross_entropy_fwd(grad, y, scale, IGNORE)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    for s in range(0, n, SLICE):
        rows = slice(s, s + SLICE)
        ref_loss, ref_grad = cross_entropy_grad_ref(logits[rows], y[rows], scale, IGNORE)
        r64_loss, r64_grad = cross_entropy_grad_ref(logits[rows].double(), y[rows], scale, IGNORE)
        assert_close_2x(loss[rows], ref_loss, r64_loss, 10 * atol, rtol, f"loss rows {rows}")
        assert_close_2x(grad[rows], ref_grad, r64_grad, atol * scale, rtol, f"grad rows {rows}")
        del ref_grad, r64_grad
    ignored = y == IGNORE
    assert (loss[ignored] == 0).all() and (grad[ignored] == 0).all()
    torch_mean = F.cross_entropy(logits.float(), y)
    torch.testing.assert_close(loss.sum() * scale, torch_mean, atol=1e-4, rtol=1e-5)


def check_linear_cross_entropy(n, vocab, hidden, dtype, train_weight, device=DEVICE, seed=0):
    """linear_cross_entropy (Triton softmax step) vs ``F.cross_entropy(x @ W.T, y)`` in value
    and gradients; the float64 reference is exact on the same (rounded) inputs."""
    gen = torch.Generator(device).manual_seed(seed)
    x0 = torch.randn(n, hidden, generator=gen, device=device).to(dtype)
    w0 = (torch.randn(vocab, hidden, generator=gen, device=device) / hidden**0.5).to(dtype)
    y = _targets(n, vocab, gen, device)

    def run(fn, dt):
        x = x0.to(dt).requires_grad_()
        w = w0.to(dt).requires_grad_(train_weight)
        loss = fn(x, w)
        return (loss.detach(), *torch.autograd.grad(loss, [x, w] if train_weight else [x]))

    def torch_ce(x, w):  # the full logits in x's dtype, softmax in float32 (float64)
        return F.cross_entropy(F.linear(x, w).to(torch.promote_types(x.dtype, torch.float32)), y)

    ours = run(lambda x, w: linear_cross_entropy(x, w, y), dtype)
    ref = run(torch_ce, dtype)
    ref64 = run(torch_ce, torch.float64)
    floors = {torch.bfloat16: 1e-4, torch.float16: 1e-5, torch.float32: 1e-6}
    for name, o, r, r64 in zip(("loss", "dx", "dw"), ours, ref, ref64):
        assert o.dtype == (torch.float32 if name == "loss" else dtype), name
        assert_close_2x(o, r, r64, floors[dtype], 1e-5, name)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_kernel_128k_vocab(dtype, atol, rtol):
    check_kernel(N, VOCAB, dtype, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_kernel_odd_vocab(dtype, atol, rtol):
    """GPT-2's 50257: rows not 16-aligned, a masked tail of 1105 columns."""
    check_kernel(1000, 50257, dtype, atol, rtol, seed=1)


@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen_w", "train_w"])
def test_linear_cross_entropy_bf16_128k(train_weight):
    check_linear_cross_entropy(N, VOCAB, HIDDEN, torch.bfloat16, train_weight)


def test_linear_cross_entropy_memory_stays_flat():
    """bf16, V = 128256, N = 4096, lm_head frozen (MNTP with LoRA): the loss's peak memory above
    its inputs stays under 512 MiB; the full float32 logits alone are 2 GiB."""
    gen = torch.Generator(DEVICE).manual_seed(2)
    x = torch.randn(N, HIDDEN, generator=gen, device=DEVICE).bfloat16().requires_grad_()
    w = (torch.randn(VOCAB, HIDDEN, generator=gen, device=DEVICE) / HIDDEN**0.5).bfloat16()
    y = _targets(N, VOCAB, gen, DEVICE)
    linear_cross_entropy(x, w, y).backward()  # warm-up: kernel compile, cuBLAS workspace
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    linear_cross_entropy(x, w, y).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    full_logits = N * VOCAB * 4
    assert extra < 512 << 20, f"peak {extra / 2**20:.0f} MiB above the inputs"
    assert extra < full_logits / 4
