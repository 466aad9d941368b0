"""Latent-attention pooling (llm2vec_fast.latent_attention): the head against a plain transcription
of NV-Embed's layer, packing isolation, gradients against float64, and loading, saving and the
errors around the head file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from l2vf_support.nv_embed import LatentAttentionModel, padded
from llm2vec_fast.checkpoint import CheckpointError
from llm2vec_fast.latent_attention import (
    LATENT_ATTENTION_FILE,
    LatentAttentionConfig,
    LatentAttentionHead,
    attach_head,
    read_head,
    save_head,
)


def packed_case(seed: int, lengths, d: int, skip=None, dtype=torch.float32):
    """Random packed hidden states for texts of ``lengths``; the first ``skip[i]`` tokens of
    text i (an instruction) are not pooled."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(sum(lengths), d, generator=gen, dtype=torch.float64).to(dtype)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    keep = torch.ones(sum(lengths), dtype=torch.bool)
    for i, s in enumerate(skip or [0] * len(lengths)):
        keep[cu[i] : cu[i] + min(s, lengths[i])] = False
    return hidden, cu, keep


def head_and_reference(seed: int, d: int, config: LatentAttentionConfig):
    torch.manual_seed(seed)
    head = LatentAttentionHead(d, config)
    ref = LatentAttentionModel(d, config.num_latents, config.num_heads, config.head_dim,
                               config.ff_mult)  # fmt: skip
    # NV-Embed's parameter names: the state dict moves across by name, nothing left over
    assert set(ref.state_dict()) == set(head.state_dict())
    ref.load_state_dict(head.state_dict())
    return head, ref


CONFIGS = [
    LatentAttentionConfig(),  # NV-Embed's: 512 latents, 8 heads as wide as the hidden state
    LatentAttentionConfig(num_latents=17, num_heads=3, head_dim=24, ff_mult=2),
    LatentAttentionConfig(num_latents=1, num_heads=1),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["nv-embed", "small", "one-latent"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_nv_embed_transcription(config, seed):
    d = 40
    lengths = [1, 7, 33, 130, 2, 64]
    skip = [0, 3, 5, 0, 1, 10]  # instruction tokens, excluded from the mean as with "mean"
    hidden, cu, keep = packed_case(100 + seed, lengths, d, skip)
    head, ref = head_and_reference(seed, d, config)
    with torch.no_grad():
        got = head(hidden, cu, keep)
        want = ref(*padded(hidden, cu, keep))
    assert got.dtype == torch.float32 and got.shape == (len(lengths), d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packing_isolation():
    """A text's vector is the same alone and packed between others."""
    d, lengths = 32, [5, 19, 1, 77, 8]
    hidden, cu, keep = packed_case(7, lengths, d, [2, 0, 0, 4, 1])
    head, _ = head_and_reference(3, d, CONFIGS[1])
    with torch.no_grad():
        together = head(hidden, cu, keep)
        for i in range(len(lengths)):
            a, b = int(cu[i]), int(cu[i + 1])
            one = torch.tensor([0, b - a], dtype=torch.int32)
            alone = head(hidden[a:b], one, keep[a:b])
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-6, atol=1e-6)


def test_empty_spans_as_mean_pooling_treats_them():
    """A text whose pooled span is empty (all instruction) pools its whole segment, as ``mean``
    does; a text with no token at all is zeros."""
    d = 16
    hidden, cu, keep = packed_case(2, [4, 3, 0, 5], d, [4, 0, 0, 0])  # text 0 all instruction
    head, _ = head_and_reference(0, d, CONFIGS[1])
    with torch.no_grad():
        out = head(hidden, cu, keep)
        whole = head(hidden[:4], torch.tensor([0, 4], dtype=torch.int32))
    torch.testing.assert_close(out[0:1], whole, rtol=1e-6, atol=1e-6)
    assert torch.equal(out[2], torch.zeros(d))
    assert out[1].abs().sum() > 0 and out[3].abs().sum() > 0


def test_gradients_against_float64():
    """Gradients to the hidden states and to every parameter of the head, float32 against the
    float64 transcription on the same weights."""
    d, lengths = 24, [3, 11, 1, 29]
    hidden, cu, keep = packed_case(5, lengths, d, [1, 2, 0, 3])
    head, ref = head_and_reference(9, d, CONFIGS[1])
    ref = ref.double()
    w = torch.randn(len(lengths), d, generator=torch.Generator().manual_seed(1))
    h32 = hidden.clone().requires_grad_(True)
    (head(h32, cu, keep) * w).sum().backward()
    h64 = hidden.double().requires_grad_(True)
    x, m = padded(h64, cu, keep)
    (ref(x, m) * w.double()).sum().backward()
    torch.testing.assert_close(h32.grad, h64.grad.float(), rtol=1e-4, atol=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad.float(), rtol=1e-4, atol=1e-5)


def test_gradcheck_float64():
    d = 8
    hidden, cu, keep = packed_case(11, [2, 5, 1], d, [1, 0, 0])
    torch.manual_seed(0)
    head = LatentAttentionHead(d, LatentAttentionConfig(num_latents=3, num_heads=2, head_dim=4))
    head = head.double()
    x = hidden.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: head(t, cu, keep), (x,))


def test_config_is_checked():
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        LatentAttentionConfig(num_heads=0)
    with pytest.raises(CheckpointError, match="unknown latent attention settings"):
        LatentAttentionConfig.from_json({"num_latents": 4, "heads": 2}, "x.json")


# ------------------------------------------------------------------- the head file


def test_save_and_read_round_trip(tmp_path):
    head, _ = head_and_reference(4, 20, CONFIGS[1])
    save_head(head, tmp_path)
    back = read_head(tmp_path, 20)
    assert back.config == head.config
    for k, v in head.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_read_head_errors(tmp_path):
    with pytest.raises(CheckpointError, match="has no latent_attention.safetensors"):
        read_head(tmp_path, 20)
    head, _ = head_and_reference(4, 20, CONFIGS[1])
    save_head(head, tmp_path)
    with pytest.raises(CheckpointError, match="hidden size 20; this model's is 32"):
        read_head(tmp_path, 32)
    # a tensor of the wrong shape (the metadata says one shape, a tensor another)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    state["latents"] = torch.zeros(5, 20)
    meta = {"config": json.dumps(head.config.to_json()), "hidden_size": "20"}
    save_file(state, str(tmp_path / LATENT_ATTENTION_FILE), metadata=meta)
    with pytest.raises(CheckpointError, match=r"latents has shape \(5, 20\)"):
        read_head(tmp_path, 20)
    state = {k: v.clone() for k, v in head.state_dict().items() if k != "latents"}
    save_file(state, str(tmp_path / LATENT_ATTENTION_FILE), metadata=meta)
    with pytest.raises(CheckpointError, match=r"tensors missing \['latents'\]"):
        read_head(tmp_path, 20)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    state["latents"][0, 0] = float("nan")
    save_file(state, str(tmp_path / LATENT_ATTENTION_FILE), metadata=meta)
    with pytest.raises(CheckpointError, match="non-finite"):
        read_head(tmp_path, 20)
    (tmp_path / LATENT_ATTENTION_FILE).write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_head(tmp_path, 20)


# ------------------------------------------------------------------- on an encoder


@pytest.fixture
def encoder_with_head(tiny_checkpoint):
    from llm2vec_fast import LLM2Vec

    enc = LLM2Vec.from_pretrained(str(tiny_checkpoint("llama")), device="cpu")
    torch.manual_seed(0)
    cfg = LatentAttentionConfig(num_latents=16, num_heads=2)
    attach_head(enc.model, LatentAttentionHead(enc.config.hidden_size, cfg))
    enc.pooling_mode = "latent_attention"
    return enc


TEXTS = ["hello world", "a b c d e f g", ["Retrieve the passage: ", "an instruction and a text"]]


def test_encoder_saves_and_loads_the_head(encoder_with_head, tmp_path):
    from llm2vec_fast import LLM2Vec

    enc = encoder_with_head
    e1 = enc.encode(TEXTS, show_progress_bar=False)
    with pytest.raises(ValueError, match="official llm2vec library cannot read"):
        enc.save(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    enc.save(tmp_path / "out", official_format=False)
    cfg = json.loads((tmp_path / "out" / "llm2vec_config.json").read_text())
    assert cfg["pooling_mode"] == "latent_attention"
    assert cfg["latent_attention"] == {"num_latents": 16, "num_heads": 2, "head_dim": None,
                                       "ff_mult": 4}  # fmt: skip
    back = LLM2Vec.from_pretrained(str(tmp_path / "out"), device="cpu")
    assert back.pooling_mode == "latent_attention"
    torch.testing.assert_close(back.encode(TEXTS, show_progress_bar=False), e1, rtol=1e-6,
                               atol=1e-6)  # fmt: skip
    # the model's own weights file holds no head tensor
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "latent" in k]


def test_pooling_mode_mismatches_are_refused(encoder_with_head, tmp_path, tiny_checkpoint):
    from llm2vec_fast import LLM2Vec

    encoder_with_head.save(tmp_path / "out", official_format=False)
    with pytest.raises(CheckpointError, match="trained with latent-attention pooling"):
        LLM2Vec.from_pretrained(str(tmp_path / "out"), pooling_mode="mean", device="cpu")
    with pytest.raises(CheckpointError, match="needs a trained head"):
        LLM2Vec.from_pretrained(str(tiny_checkpoint("llama")), pooling_mode="latent_attention",
                                device="cpu")  # fmt: skip
    plain = LLM2Vec.from_pretrained(str(tiny_checkpoint("llama")), device="cpu")
    with pytest.raises(ValueError, match="needs a trained latent-attention head"):
        LLM2Vec(plain.model, plain.tokenizer, pooling_mode="latent_attention")
    with pytest.raises(ValueError, match="unknown pooling_mode 'latent'.*latent_attention"):
        LLM2Vec(plain.model, plain.tokenizer, pooling_mode="latent")


# ------------------------------------------------------------------- like any pooling mode


@pytest.fixture(scope="module")
def head_checkpoint(tmp_path_factory, tiny_checkpoint) -> str:
    """A tiny llama checkpoint saved with a latent-attention head (llm2vec-fast format)."""
    from llm2vec_fast import LLM2Vec

    enc = LLM2Vec.from_pretrained(str(tiny_checkpoint("llama", seed=8)), device="cpu")
    torch.manual_seed(1)
    cfg = LatentAttentionConfig(num_latents=8, num_heads=2, head_dim=16)
    attach_head(enc.model, LatentAttentionHead(enc.config.hidden_size, cfg))
    enc.pooling_mode = "latent_attention"
    out = tmp_path_factory.mktemp("head-ckpt") / "enc"
    enc.save(out, official_format=False)
    return str(out)


MANY = [f"text {i} " + "word " * (i % 11) for i in range(23)] + [["Find: ", "a query"], "x"]


def test_encode_iter_and_several_devices(head_checkpoint):
    from llm2vec_fast import LLM2Vec

    enc = LLM2Vec.from_pretrained(head_checkpoint, device="cpu")
    ref = enc.encode(MANY, batch_size=4, show_progress_bar=False)
    chunks = list(enc.encode_iter(MANY, batch_size=4, chunk_size=7))
    torch.testing.assert_close(torch.from_numpy(np.concatenate(chunks)), ref, rtol=1e-6, atol=1e-6)
    try:  # two worker processes, each loading the checkpoint (and its head) itself
        multi = enc.encode(MANY, batch_size=4, device=["cpu", "cpu"], show_progress_bar=False)
    finally:
        enc.close_device_pool()
    torch.testing.assert_close(multi, ref, rtol=1e-6, atol=1e-6)


def test_batch_job_with_the_head(head_checkpoint, tmp_path):
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.batch_job import read_embeddings
    from llm2vec_fast.cli import main as cli_main

    texts = [t if isinstance(t, str) else t[1] for t in MANY]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    argv = ["embed", str(tmp_path / "in.txt"), "--model", head_checkpoint, "-q"]
    assert cli_main([*argv, "-o", str(tmp_path / "job") + "/", "--shard-size", "10"]) == 0
    _, got = read_embeddings(tmp_path / "job")
    ref = LLM2Vec.from_pretrained(head_checkpoint, device="cpu").encode(
        texts, show_progress_bar=False
    )
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
    # asking the job for another pooling of this checkpoint is refused before any work
    assert cli_main([*argv, "-o", str(tmp_path / "mean.npy"), "--pooling", "mean"]) != 0
    assert not (tmp_path / "mean.npy").exists()


def test_sentence_transformers_module_with_the_head(head_checkpoint, tmp_path):
    pytest.importorskip("sentence_transformers")
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.integrations.sentence_transformers import (
        llm2vec_sentence_transformer,
        load_sentence_transformer,
    )

    enc = LLM2Vec.from_pretrained(head_checkpoint, device="cpu")
    st = llm2vec_sentence_transformer(enc)
    texts = MANY[:6]
    ref = enc.encode(texts, show_progress_bar=False)
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), ref, rtol=1e-5, atol=1e-5)
    st.save(str(tmp_path / "st"))
    back = load_sentence_transformer(tmp_path / "st", device="cpu")
    got = back.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_latent_keys_values_are_kept_only_while_valid():
    """Without gradients the latents' keys and values are computed once and reused; a weight
    written in place, a cast, or gradients being on compute them again."""
    d = 16
    hidden, cu, keep = packed_case(3, [4, 9], d)
    head, _ = head_and_reference(2, d, CONFIGS[1])
    calls = []
    head.cross_attend_blocks[0].fn.to_kv.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        a = head(hidden, cu, keep)
        b = head(hidden, cu, keep)
        assert len(calls) == 1 and torch.equal(a, b)
        head.latents.mul_(2.0)  # a trained or loaded weight changes in place
        c = head(hidden, cu, keep)
        assert len(calls) == 2 and not torch.allclose(a, c)
    head.double()
    with torch.no_grad():
        assert head(hidden.double(), cu, keep).dtype == torch.float64 and len(calls) == 3
    head(hidden.double(), cu, keep)  # with gradients: computed in the graph, never cached
    head(hidden.double(), cu, keep)
    assert len(calls) == 5
