"""Our encoder inside a sentence-transformers pipeline: the same embeddings as ``LLM2Vec.encode``,
prompts as instructions, int8/binary precision, truncate_dim, token embeddings, save/load and
one training step.

Needs the sentence-transformers extra (``pip install "llm2vec-fast[st]"``); skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

pytest.importorskip(
    "sentence_transformers",
    reason="the sentence-transformers extra is not installed (pip install 'llm2vec-fast[st]')",
)

from sentence_transformers import quantize_embeddings  # noqa: E402

from llm2vec_fast import LLM2Vec  # noqa: E402
from llm2vec_fast.integrations.sentence_transformers import (  # noqa: E402
    LLM2VecModule,
    llm2vec_sentence_transformer,
    load_sentence_transformer,
)
from llm2vec_fast.testing import make_tiny_checkpoint  # noqa: E402

HIDDEN = 64
INSTRUCTION = "Given a question, retrieve passages that answer it:"
TEXTS = [
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday as oil prices rose, " * 3,
    "x",
    "naïve café — 日本語 😀",
    "Retrieval augmented generation needs good dense vectors.",
]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = tiny_checkpoint("llama", seed=5)
    return LLM2Vec.from_pretrained(ckpt, device="cpu", max_length=24)


@pytest.fixture(scope="module")
def st(model):
    return llm2vec_sentence_transformer(model, prompts={"query": INSTRUCTION})


def _ref(model, items, **kw):
    return model.encode(items, batch_size=2, show_progress_bar=False, **kw)


def test_same_embeddings_as_llm2vec_encode(model, st):
    assert st.get_embedding_dimension() == HIDDEN and st.max_seq_length == 24
    out = st.encode(TEXTS, batch_size=3, convert_to_tensor=True)
    assert out.dtype == torch.float32 and out.shape == (len(TEXTS), HIDDEN)
    assert_close(out, _ref(model, TEXTS), atol=1e-5, rtol=1e-5)
    # normalize_embeddings, and a single string
    out = st.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    assert_close(out, _ref(model, TEXTS, normalize_embeddings=True), atol=1e-5, rtol=1e-5)
    one = st.encode(TEXTS[0])
    assert isinstance(one, np.ndarray) and one.shape == (HIDDEN,)
    assert_close(torch.from_numpy(one), _ref(model, TEXTS[0]), atol=1e-5, rtol=1e-5)


def test_prompt_is_the_llm2vec_instruction(model, st):
    pairs = [[INSTRUCTION, t] for t in TEXTS]
    expected = _ref(model, pairs)
    by_name = st.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    assert_close(by_name, expected, atol=1e-5, rtol=1e-5)
    assert_close(st.encode_query(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-5)
    assert_close(st.encode(pairs, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-5)
    # not sentence-transformers' default (prompt pasted before the text and pooled over)
    pasted = _ref(model, [INSTRUCTION + t for t in TEXTS])
    assert (by_name - pasted).abs().max() > 1e-3
    with pytest.raises(ValueError, match="give the instruction one way"):
        st.encode([["other instruction", "text"]], prompt=INSTRUCTION)


def test_precision_and_truncate_dim(model, st):
    ref = _ref(model, TEXTS).numpy()
    int8 = st.encode(TEXTS, precision="int8")
    expected = quantize_embeddings(ref, precision="int8")
    assert int8.dtype == np.int8 and int8.shape == ref.shape
    assert np.abs(int8.astype(np.int32) - expected.astype(np.int32)).max() <= 1
    binary = st.encode(TEXTS, precision="binary")
    assert binary.dtype == np.int8 and binary.shape == (len(TEXTS), HIDDEN // 8)
    bits = np.unpackbits((binary.astype(np.int16) + 128).astype(np.uint8), axis=1)
    differ = bits != (ref > 0)
    assert not differ[np.abs(ref) > 1e-5].any()  # a sign may differ only where ~0
    out = st.encode(TEXTS, truncate_dim=16, normalize_embeddings=True, convert_to_tensor=True)
    expected = torch.nn.functional.normalize(torch.from_numpy(ref[:, :16]), dim=1)
    assert out.shape == (len(TEXTS), 16)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_token_embeddings(model, st):
    items = [*TEXTS, [INSTRUCTION, "a question"]]
    got = st.encode(items, output_value="token_embeddings", batch_size=3)
    ref = _ref(model, items, output_value="token_embeddings")
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and r.shape[0] > 0
        assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_normalize_module_and_save_load(model, tmp_path):
    st = llm2vec_sentence_transformer(model, normalize=True, prompts={"query": INSTRUCTION})
    expected = _ref(model, [[INSTRUCTION, t] for t in TEXTS], normalize_embeddings=True)
    assert_close(st.encode_query(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-5)
    st.save(str(tmp_path / "st"))
    types = [m["type"] for m in json.loads((tmp_path / "st" / "modules.json").read_text())]
    assert types[0] == "llm2vec_fast.integrations.sentence_transformers.LLM2VecModule"
    loaded = load_sentence_transformer(tmp_path / "st", device="cpu")
    assert isinstance(loaded[0], LLM2VecModule) and loaded.prompts["query"] == INSTRUCTION
    got = loaded.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the directory is also an ordinary llm2vec-fast checkpoint
    again = LLM2Vec.from_pretrained(tmp_path / "st", device="cpu")
    assert_close(_ref(again, TEXTS), _ref(model, TEXTS), atol=1e-5, rtol=1e-5)


def test_load_refuses_unknown_module_classes(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.Module"}])
    )
    with pytest.raises(ValueError, match="neither llm2vec-fast's nor sentence-transformers'"):
        load_sentence_transformer(d)
    with pytest.raises(FileNotFoundError, match="modules.json"):
        load_sentence_transformer(tmp_path)


def test_one_training_step(tmp_path):
    """A SentenceTransformerTrainer step with MultipleNegativesRankingLoss on our module: the
    loss it reports is the one our embeddings give, and the weights move."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", "llama", seed=6)
    model = LLM2Vec.from_pretrained(ckpt, device="cpu")
    st = llm2vec_sentence_transformer(model)
    anchors = ["what do cats eat?", "where is paris?", "who wrote hamlet?", "how hot is the sun?"]
    positives = ["cats eat meat", "paris is in france", "shakespeare wrote it", "very hot"]

    a = torch.nn.functional.normalize(_ref(model, [[INSTRUCTION, t] for t in anchors]), dim=1)
    p = torch.nn.functional.normalize(_ref(model, positives), dim=1)
    loss = MultipleNegativesRankingLoss(st)
    expected = torch.nn.functional.cross_entropy(loss.scale * a @ p.T, torch.arange(4)).item()
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()

    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        prompts={"anchor": INSTRUCTION},
    )
    data = Dataset.from_dict({"anchor": anchors, "positive": positives})
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=data, loss=loss)
    result = trainer.train()
    assert result.training_loss == pytest.approx(expected, rel=1e-4)
    after = model.model.layers[0].self_attn.q_proj.weight.detach()
    assert (after - before).abs().max() > 0
