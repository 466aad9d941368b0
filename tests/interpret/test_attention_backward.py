"""The attention custom ops' one autograd path, under ``TRITON_INTERPRET=1``.

A spy on every flash kernel launch shows that the backward launches no forward kernel (it
recomputes P from the saved log-sum-exp and regenerates the dropout mask from the saved seed),
for the public function and for the whole model; and the model's attention (``Attention``
with ``attn_implementation="triton"``) gives exactly the gradients of the custom ops called by
hand. float32, odd lengths, GQA, fresh data seeds per run (printed on failure).

Run on its own: ``TRITON_INTERPRET=1 python -m pytest -q tests/interpret/test_attention_backward.py``.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig

from l2vf_support.launches import spy_on, take_counts
from l2vf_support.packed import cu_seqlens
from llm2vec_fast import kernels
from llm2vec_fast.kernels import flash_varlen_kernels as fk
from llm2vec_fast.kernels.dropout_seeds import draw_dropout_seed
from llm2vec_fast.model import EncoderModel

FORWARD = "flash_varlen_fwd_kernel"
BACKWARD = ("flash_varlen_bwd_preprocess", "flash_varlen_bwd_dkdv_kernel",
            "flash_varlen_bwd_dq_kernel")  # fmt: skip
LENGTHS = [7, 1, 0, 13, 5]  # odd lengths, a one-token text, an empty text


@pytest.fixture
def spies(monkeypatch):
    return spy_on(monkeypatch, fk, (FORWARD, *BACKWARD))


def _fresh_seed() -> int:
    return random.SystemRandom().randrange(1 << 31)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3], ids=["p0", "p0.3"])
def test_backward_launches_no_forward_kernel(spies, causal, dropout_p):
    seed = _fresh_seed()
    g = torch.Generator().manual_seed(seed)
    total = sum(LENGTHS)
    q = torch.randn(total, 4, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(total, 2, 16, generator=g, requires_grad=True) for _ in range(2))
    out = kernels.varlen_attention(
        q, k, v, cu_seqlens(LENGTHS), max(LENGTHS), causal, None, dropout_p
    )
    assert take_counts(spies) == {FORWARD: 1, **dict.fromkeys(BACKWARD, 0)}, f"data seed {seed}"
    out.backward(torch.randn(out.shape, generator=g))
    assert take_counts(spies) == {FORWARD: 0, **dict.fromkeys(BACKWARD, 1)}, f"data seed {seed}"
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def _tiny_model(seed: int, dropout: float) -> EncoderModel:
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=101, attention_dropout=dropout,
    )  # fmt: skip
    torch.manual_seed(seed)
    return EncoderModel(cfg, attn_implementation="triton").train()


def test_model_backward_launches_no_forward_kernel(spies):
    seed = _fresh_seed()
    model = _tiny_model(seed, dropout=0.3)
    lengths = [n for n in LENGTHS if n]
    ids = torch.randint(0, 101, (sum(lengths),), generator=torch.Generator().manual_seed(seed))
    pos = torch.cat([torch.arange(n) for n in lengths])
    hidden = model(ids, cu_seqlens(lengths), pos, max(lengths))
    layers = len(model.layers)
    assert take_counts(spies) == {FORWARD: layers, **dict.fromkeys(BACKWARD, 0)}, f"seed {seed}"
    hidden.pow(2).sum().backward()
    assert take_counts(spies) == {FORWARD: 0, **dict.fromkeys(BACKWARD, layers)}, f"seed {seed}"


@pytest.mark.parametrize("dropout_p", [0.0, 0.3], ids=["p0", "p0.3"])
def test_model_attention_matches_the_custom_ops(dropout_p):
    """The model's attention module and the custom ops called by hand (rope, then
    ``varlen_attention_forward``; ``varlen_attention_backward`` through the registered autograd)
    give the same output and gradients, to the bit."""
    seed = _fresh_seed()
    model = _tiny_model(seed, dropout=dropout_p)
    attn = model.layers[0].self_attn
    cu, mx, total = cu_seqlens(LENGTHS), max(LENGTHS), sum(LENGTHS)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(total, 64, generator=g)
    w = torch.randn(total, 64, generator=g)
    pos = torch.cat([torch.arange(n) for n in LENGTHS])
    rope = (pos, model.inv_freq, model.attention_scaling)

    def by_model(x):
        torch.manual_seed(seed)  # the dropout seed drawn per call
        return attn(x, rope, cu, mx, dropout_p)

    def by_ops(x):
        torch.manual_seed(seed)
        t, h, d = x.shape[0], attn.num_heads, attn.head_dim
        q = attn.q_proj(x).view(t, h, d)
        k = attn.k_proj(x).view(t, attn.num_kv_heads, d)
        v = attn.v_proj(x).view(t, attn.num_kv_heads, d)
        q, k = torch.ops.llm2vec_fast.apply_rope_forward(q, k, *rope)
        drop = draw_dropout_seed(x.device) if dropout_p else None
        o, _ = torch.ops.llm2vec_fast.varlen_attention_forward(
            q, k, v, cu, mx, False, None, dropout_p, drop, 0, False
        )
        return attn.o_proj(o.reshape(t, h * d))

    results = []
    for fn in (by_model, by_ops):
        leaf = x.clone().requires_grad_(True)
        attn.zero_grad(set_to_none=True)
        (fn(leaf) * w).sum().backward()
        results.append([fn(x).detach(), leaf.grad] + [p.grad for p in attn.parameters()])
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"tensor {i} differs (data seed {seed})"
