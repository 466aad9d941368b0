"""The packed encoder against HF transformers' own model of each family.

HF's model given a full 4-D attention mask attends everywhere the mask allows, so an all-True
mask is "the family's own model with causal masking disabled", and a lower-triangular one is
its causal model. Our model runs the same weights over packed input.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import (
    GemmaConfig,
    GemmaModel,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    Qwen2Config,
    Qwen2Model,
)

from llm2vec_fast.loading import build_encoder
from llm2vec_fast.model import EncoderModel

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
    "rope_theta": 500000.0,
}

FAMILIES = {
    "llama": (LlamaConfig, LlamaModel, {}),
    "llama3-rope": (LlamaConfig, LlamaModel, {"rope_parameters": LLAMA3_ROPE}),
    "mistral": (MistralConfig, MistralModel, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2Model, {}),
    "gemma": (GemmaConfig, GemmaModel, {"head_dim": 16}),
}
VOCAB = 311


def _tiny_hf(family: str, seed: int, heads=4, kv_heads=2):
    config_cls, model_cls, extra = FAMILIES[family]
    cfg = config_cls(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # HF inits norms to exactly 1 (0 for gemma): perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model


def _packed(lengths: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    texts = [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    pos = torch.cat([torch.arange(n) for n in lengths])
    return texts, torch.cat(texts), cu, pos


def _hf_hidden(model, ids: torch.Tensor, causal: bool) -> torch.Tensor:
    n = ids.numel()
    mask = torch.ones(1, 1, n, n, dtype=torch.bool)
    if causal:
        mask = mask.tril()
    with torch.no_grad():
        return model(ids[None], attention_mask=mask).last_hidden_state[0]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("impl", ["eager", "sdpa", "triton"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_matches_hf_family(family, impl, causal):
    cfg, hf = _tiny_hf(family, seed=hash((family, impl, causal)) % 1000)
    ours = build_encoder(cfg, hf.state_dict(), attn_implementation=impl, causal=causal)
    lengths = [7, 1, 23, 2, 13]  # odd lengths, a single-token text
    texts, ids, cu, pos = _packed(lengths, seed=1)
    with torch.no_grad():
        out = ours(ids, cu, pos, max(lengths))
    for i, t in enumerate(texts):
        assert_close(out[cu[i] : cu[i + 1]], _hf_hidden(hf, t, causal), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kv_heads", [4, 1])  # MHA and 4:1 GQA (the other tests use 2:1)
def test_gqa_ratios(kv_heads):
    cfg, hf = _tiny_hf("llama", seed=5, heads=4, kv_heads=kv_heads)
    ours = build_encoder(cfg, hf.state_dict())
    texts, ids, cu, pos = _packed([9, 4], seed=2)
    with torch.no_grad():
        out = ours(ids, cu, pos, 9)
    for i, t in enumerate(texts):
        assert_close(out[cu[i] : cu[i + 1]], _hf_hidden(hf, t, False), atol=1e-4, rtol=0)


def test_bidirectional_differs_from_causal():
    """Guards the two tests above: the mask really changes the output."""
    cfg, hf = _tiny_hf("llama", seed=3)
    bi = build_encoder(cfg, hf.state_dict(), causal=False)
    ca = build_encoder(cfg, hf.state_dict(), causal=True)
    _, ids, cu, pos = _packed([11], seed=4)
    with torch.no_grad():
        a, b = bi(ids, cu, pos, 11), ca(ids, cu, pos, 11)
    assert (a[0] - b[0]).abs().max() > 1e-3  # the first token sees only itself when causal


def test_packing_isolation():
    """A text's hidden states do not depend on its neighbours or its place in the batch."""
    cfg, hf = _tiny_hf("qwen2", seed=7)
    model = build_encoder(cfg, hf.state_dict())
    lengths = [5, 17, 1, 30, 8]
    texts, _, _, _ = _packed(lengths, seed=9)

    def run(order):
        ts = [texts[i] for i in order]
        ls = [lengths[i] for i in order]
        cu = torch.zeros(len(ls) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(ls), 0)
        pos = torch.cat([torch.arange(n) for n in ls])
        with torch.no_grad():
            h = model(torch.cat(ts), cu, pos, max(ls))
        return {i: h[cu[j] : cu[j + 1]] for j, i in enumerate(order)}

    alone = {i: run([i])[i] for i in range(len(texts))}
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        together = run(order)
        for i in range(len(texts)):
            assert_close(together[i], alone[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_float32(dtype):
    cfg, hf = _tiny_hf("llama", seed=11)
    ref = build_encoder(cfg, hf.state_dict())
    low = build_encoder(cfg, hf.state_dict(), dtype=dtype)
    _, ids, cu, pos = _packed([12, 5], seed=12)
    with torch.no_grad():
        a = ref(ids, cu, pos, 12)
        b = low(ids, cu, pos, 12)
    assert b.dtype == dtype
    assert torch.isfinite(b).all()
    rel = (b.float() - a).norm() / a.norm()
    assert rel < 3e-2, f"relative error {rel:.3g} in {dtype}"


def test_unknown_family_and_backend_are_clear_errors():
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported"):
        from transformers import GPT2Config

        EncoderModel(GPT2Config(n_embd=32, n_layer=1, n_head=2))
    cfg, _ = _tiny_hf("llama", seed=0)
    with pytest.raises(ValueError, match="unknown attn_implementation 'flash'"):
        EncoderModel(cfg, attn_implementation="flash")
