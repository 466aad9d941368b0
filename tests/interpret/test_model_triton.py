"""The whole encoder with ``attn_implementation="triton"``: every Triton kernel interpreted on
the CPU, against HF transformers' own model (bidirectional through a full 4-D mask)."""

from __future__ import annotations

import pytest
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402
from transformers import GemmaConfig, GemmaModel, LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model  # noqa: E402

from llm2vec_fast.loading import build_encoder  # noqa: E402

FAMILIES = {
    "llama": (LlamaConfig, LlamaModel, {}),
    "qwen2": (Qwen2Config, Qwen2Model, {}),
    "gemma": (GemmaConfig, GemmaModel, {"head_dim": 16}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_triton_model_matches_hf(family):
    config_cls, model_cls, extra = FAMILIES[family]
    cfg = config_cls(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=101, **extra,
    )  # fmt: skip
    torch.manual_seed(len(family))
    hf = model_cls(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = build_encoder(cfg, hf.state_dict(), attn_implementation="triton")
    lengths = [5, 1, 19]
    texts = [torch.randint(0, 101, (n,)) for n in lengths]
    cu = torch.tensor([0, 5, 6, 25], dtype=torch.int32)
    pos = torch.cat([torch.arange(n) for n in lengths])
    with torch.no_grad():
        out = ours(torch.cat(texts), cu, pos, max(lengths))
        for i, t in enumerate(texts):
            mask = torch.ones(1, 1, len(t), len(t), dtype=torch.bool)
            ref = hf(t[None], attention_mask=mask).last_hidden_state[0]
            assert_close(out[cu[i] : cu[i + 1]], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "last_token"])
def test_triton_encoder_matches_sdpa(mode, tmp_path):
    """LLM2Vec.encode end to end through the kernels (pooling included) equals the torch path."""
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "m", "llama", seed=7)
    texts = [["Represent the news", "Stocks fell on Monday."], "a b c", "x", "a longer text " * 6]
    kw = dict(pooling_mode=mode, max_length=32, device="cpu")
    ours = LLM2Vec.from_pretrained(ckpt, attn_implementation="triton", **kw)
    ref = LLM2Vec.from_pretrained(ckpt, attn_implementation="sdpa", **kw)
    assert_close(
        ours.encode(texts, show_progress_bar=False),
        ref.encode(texts, show_progress_bar=False),
        atol=1e-4,
        rtol=1e-4,
    )
