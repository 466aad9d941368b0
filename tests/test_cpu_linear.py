"""The model's linear layers on the CPU (kernels/cpu_linear.py): oneDNN's float32 GEMM against
``F.linear`` and float64, the dispatch rule (inference only, float32 2-D CPU tensors, the
switch), and a whole model through either library."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from llm2vec_fast.kernels import Linear
from llm2vec_fast.kernels import cpu_linear as cl

needs_onednn = pytest.mark.skipif(not cl._AVAILABLE, reason="this torch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows,in_f,out_f", [(1, 7, 3), (37, 576, 192), (300, 64, 1536),
                                             (1024, 576, 1536), (5, 1536, 576)])  # fmt: skip
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_matches_float64(rows, in_f, out_f, bias):
    seed = random.SystemRandom().randrange(1 << 31)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_f, generator=g)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    b = torch.randn(out_f, generator=g) if bias else None
    with torch.no_grad():
        assert cl.use_onednn(x, w)
        got = cl.linear(x, w, b)
        mkl = F.linear(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert got.dtype == torch.float32 and got.shape == (rows, out_f)
    # both float32 GEMMs: within float32 rounding of the float64 product, and of each other
    tol = dict(rtol=1e-5, atol=1e-5 * in_f**0.5)
    torch.testing.assert_close(got.double(), ref, **tol, msg=lambda m: f"seed {seed}: {m}")
    torch.testing.assert_close(got, mkl, **tol, msg=lambda m: f"seed {seed}: {m}")


@needs_onednn
def test_strided_input():
    x = torch.randn(40, 96)[:, ::2]  # not contiguous
    w = torch.randn(16, 48)
    with torch.no_grad():
        torch.testing.assert_close(cl.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_dispatch_rule(monkeypatch):
    w = torch.randn(8, 4)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert cl.use_onednn(x, w) == cl._AVAILABLE
        assert not cl.use_onednn(x.double(), w.double())  # float32 only
        assert not cl.use_onednn(x[None], w)  # 2-D only
        assert not cl.use_onednn(x[:0], w)  # no rows: F.linear
    # gradients recorded: F.linear, and the gradient is F.linear's
    xg = x.clone().requires_grad_(True)
    assert not cl.use_onednn(xg, w)
    Linear(4, 8)(xg).sum().backward()
    assert xg.grad is not None
    monkeypatch.setattr(cl, "_WANTED", "mkl")  # LLM2VEC_FAST_CPU_GEMM=mkl
    with torch.no_grad():
        assert not cl.use_onednn(x, w)


def test_linear_is_an_nn_linear_with_its_names():
    layer = Linear(4, 8, bias=True)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


@needs_onednn
def test_a_model_through_either_library(tiny_checkpoint, monkeypatch):
    from llm2vec_fast import LLM2Vec

    enc = LLM2Vec.from_pretrained(tiny_checkpoint("qwen2"), device="cpu")  # qkv biases
    texts = ["a b c", "the river bank", ["Retrieve: ", "money loan"]]
    onednn = enc.encode(texts, show_progress_bar=False)
    monkeypatch.setattr(cl, "_WANTED", "mkl")
    mkl = enc.encode(texts, show_progress_bar=False)
    torch.testing.assert_close(onednn, mkl, rtol=1e-5, atol=1e-5)
