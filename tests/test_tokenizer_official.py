"""The doc_max_length cut and the encoder's pooled counts against llm2vec 0.2.3's own logic:
the C++ cut is the official per-text word loop (and cuts by tokens where that loop would empty a
non-blank text), and the ids and pooled counts the encoder packs are the official ``tokenize``'s
input_ids and embed_mask."""

from __future__ import annotations

import random

import pytest

from l2vf_support.official import (
    SEP,
    count_of,
    official_doc_cut,
    official_tokenize,
    reference_doc_cut,
)
from l2vf_support.tokenizer_variants import HFTokenizer, gensim_texts, pair

PY_SPACES = [chr(c) for c in range(0x110000) if chr(c).isspace()]


@pytest.mark.parametrize("name", ["smollm2", "mistral", "llama3"])
@pytest.mark.parametrize(("doc_max_length", "max_length"), [(7, 16), (40, 64), (400, 512)])
def test_doc_cut_is_the_official_loop(name, doc_max_length, max_length):
    """The C++ doc_max_length cut against the official per-text loop: the same texts (every
    one of Python's whitespace characters splits words) and the same final counts."""
    ours, hf = pair(name)
    rng = random.Random(doc_max_length)
    texts = list(gensim_texts()[:40])
    texts += [" ".join(texts[i : i + 6]) for i in range(0, 36, 6)]  # long documents
    for _ in range(30):
        words = [rng.choice(["naïve", "😀", "x" * 40, "don't", "42", "数字", "a.b", "e\u0301"])
                 for _ in range(rng.randint(0, 80))]  # fmt: skip
        texts.append("".join(w + "".join(rng.choices(PY_SPACES, k=rng.randint(1, 3)))
                             for w in words))  # fmt: skip
    texts += ["", " ", "\u3000\x1c", "one" * 500, " " * 900 + "\t"]
    counts, cut = ours.doc_cut(texts, doc_max_length, max_length=max_length)
    hf = HFTokenizer.from_str(hf.to_str())
    hf.enable_truncation(max_length)
    emptied = 0
    for i, text in enumerate(texts):
        want, n, was_cut = official_doc_cut(hf, text, doc_max_length)
        if not want and text.split():
            # the one deviation: the official cut empties a non-blank text; cut by tokens
            want, n, how = reference_doc_cut(count_of(hf), text, doc_max_length)
            assert how == "tokens" and want and n <= doc_max_length, i
            emptied += 1
        assert (cut[i] is not None) == was_cut, i
        assert (text if cut[i] is None else cut[i]) == want, i
        assert counts[i] == n, i
    assert emptied >= 1  # "one" * 500 at least


def _no_space_texts() -> list[str]:
    """Texts without spaces that run far over any doc_max_length: the official word cut
    empties each of them."""
    rng = random.Random(7)
    import base64

    jp = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    return [
        "a" * 3000,
        (jp * 20)[:300],
        base64.b64encode(rng.randbytes(3000)).decode(),
        "for(let_i=0;i<n;i++){total+=values[i]*weights[i];}" * 40,
        "x" * 2000 + " tail",  # two words: int(2 * limit / n) is still 0
        "  \u3000" + "😀" * 400 + "\n",
        "e\u0301" * 700,
    ]


@pytest.mark.parametrize("name", ["smollm2", "mistral", "llama3", "sp_legacy"])
@pytest.mark.parametrize(("doc_max_length", "max_length"), [(20, 64), (400, 512), (1, 8)])
def test_doc_cut_never_empties_a_non_blank_text(name, doc_max_length, max_length):
    """A non-blank text that the official word cut would empty (no spaces) is cut by tokens
    instead: a prefix within the limit (not a silent empty string), as the reference."""
    ours, hf = pair(name)
    hf = HFTokenizer.from_str(hf.to_str())
    hf.enable_truncation(max_length)
    count = count_of(hf)
    texts = _no_space_texts()
    counts, cut = ours.doc_cut(texts, doc_max_length, max_length=max_length, num_threads=2)
    emptied = 0
    for i, text in enumerate(texts):
        official, n, was_cut = official_doc_cut(hf, text, doc_max_length)
        if official:  # within the limit as it is (Mistral has tokens of 16 "a"s)
            assert (cut[i] is None) == (not was_cut) and counts[i] == n, i
            continue
        emptied += 1
        want, n, how = reference_doc_cut(count, text, doc_max_length)
        assert how == "tokens" and cut[i] == want and counts[i] == n == count(want), i
        assert text.startswith(cut[i]) and n <= doc_max_length, i
        if doc_max_length > 1:
            assert cut[i].strip(), i
        assert count(text[: len(cut[i]) + 1]) > doc_max_length, i  # nothing more fits
    assert emptied >= 5


# ---------------------------------------------------------------------------
# the encoder: instruction bookkeeping against the official embed_mask


INSTRUCTIONS = [
    "",
    "Given a news article, retrieve articles on the same topic",
    "  Classify the sentiment of the review:  ",
    "Represent this sentence for searching relevant passages",
]


@pytest.mark.parametrize(("family", "add_bos", "max_length"),
                         [("llama", False, 24), ("llama", False, 512), ("mistral", True, 40)])  # fmt: skip
def test_pooled_counts_equal_official_embed_mask(tiny_checkpoint, family, add_bos, max_length):
    """Over gensim's corpora with instructions, the ids and pooled counts the encoder packs
    (C++ tokenizer) are the official ``tokenize``'s input_ids and embed_mask."""
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.tokenizer import for_hf_tokenizer

    ckpt = tiny_checkpoint(family, seed=0, add_bos=add_bos)
    model = LLM2Vec.from_pretrained(ckpt, max_length=max_length, device="cpu")
    assert for_hf_tokenizer(model.tokenizer) is not None  # the C++ path is what runs here
    texts = gensim_texts()
    pairs = [(INSTRUCTIONS[i % len(INSTRUCTIONS)], t) for i, t in enumerate(texts)]
    joined = model.text.joined(pairs)
    ids, pool = model.text.token_ids(joined)
    official = official_tokenize(model.tokenizer, joined, max_length)
    valid = official["attention_mask"].bool()
    width = valid.shape[1]
    n_share_differs = 0
    for i in range(len(joined)):
        assert ids[i] == official["input_ids"][i][valid[i]].tolist(), i
        ours = [0] * width  # our pool mask: the last min(pool, len) tokens of the sequence
        n = min(pool[i], len(ids[i]))
        ours[width - n :] = [1] * n
        assert ours == official["embed_mask"][i].tolist(), (i, pool[i], len(ids[i]))
        # the text's share of the joined ids is not the official count
        instruction = joined[i].split(SEP)[0]
        share = (
            len(ids[i]) - len(model.tokenizer(instruction)["input_ids"]) if instruction else None
        )
        n_share_differs += share is not None and share != pool[i]
    if max_length < 100:
        assert n_share_differs > 0
