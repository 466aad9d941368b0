"""``attn_implementation="auto"``'s guard: ``LLM2Vec.check_kernels`` runs the model through our
Triton kernels (interpreted on the CPU here) and through torch, and names what disagrees; a
sabotaged kernel makes ``select_kernels`` fall back to torch's path with a warning."""

from __future__ import annotations

import pytest
import torch  # noqa: E402

import llm2vec_fast.model as model_module  # noqa: E402
import llm2vec_fast.runner as runner_module  # noqa: E402
from llm2vec_fast import LLM2Vec  # noqa: E402

LENGTHS = (1, 7, 13)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = tiny_checkpoint("llama", seed=9)
    return LLM2Vec.from_pretrained(ckpt, device="cpu")


def test_correct_kernels_pass_and_are_chosen(model, monkeypatch):
    assert model.check_kernels(LENGTHS) is None
    assert model.model.attn_implementation == "sdpa"  # the check leaves torch's path on
    real = runner_module.EncoderRunner.check_kernels
    monkeypatch.setattr(
        runner_module.EncoderRunner, "check_kernels", lambda self: real(self, LENGTHS)
    )
    assert model.select_kernels(check_on_cpu=True, recheck=True) == "triton"
    assert model.model.attn_implementation == "triton"
    model.model.attn_implementation = "sdpa"


def test_a_wrong_norm_kernel_is_caught(model, monkeypatch):
    real = model_module.rms_norm
    monkeypatch.setattr(
        model_module, "rms_norm", lambda x, w, eps, gemma=False: real(x, w, eps, gemma=gemma) * 1.5
    )
    problem = model.check_kernels(LENGTHS)
    assert problem is not None and "hidden states" in problem
    real_check = runner_module.EncoderRunner.check_kernels
    monkeypatch.setattr(
        runner_module.EncoderRunner, "check_kernels", lambda self: real_check(self, LENGTHS)
    )
    with pytest.warns(RuntimeWarning, match="failed their check"):
        assert model.select_kernels(check_on_cpu=True, recheck=True) == "sdpa"
    assert model.model.attn_implementation == "sdpa"


def test_a_wrong_pooling_kernel_and_a_crash_are_caught(model, monkeypatch):
    monkeypatch.setattr(
        runner_module, "segment_pool", lambda h, cu, m, mode: torch.zeros(len(cu) - 1, h.shape[1])
    )
    assert "pooling" in model.check_kernels(LENGTHS)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(model_module, "rms_norm", broken)
    assert "no kernel image" in model.check_kernels(LENGTHS)
    assert model.model.attn_implementation == "sdpa"


def test_the_latent_attention_head_is_checked_too(tiny_checkpoint, monkeypatch):
    """With a latent-attention head, the check also runs the head through its kernels against
    its torch path, and names the head when they disagree."""
    import llm2vec_fast.latent_attention as latent_module

    enc = LLM2Vec.from_pretrained(tiny_checkpoint("llama", seed=9), device="cpu")
    torch.manual_seed(0)
    cfg = latent_module.LatentAttentionConfig(num_latents=17, num_heads=2, head_dim=24)
    latent_module.attach_head(enc.model, latent_module.LatentAttentionHead(64, cfg))
    enc.pooling_mode = "latent_attention"
    assert enc.check_kernels(LENGTHS) is None
    assert enc.model.latent_attention.fused is False  # torch's path is left on
    monkeypatch.setattr(latent_module, "latent_attention_op", lambda q, k, v: torch.zeros_like(q))
    assert "latent-attention pooling differs" in enc.check_kernels(LENGTHS)
