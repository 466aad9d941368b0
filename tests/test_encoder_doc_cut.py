"""The doc_max_length cut: the batched cut (C++ threads or Python rounds) against the official
loop text by text, the token cut of a long text without spaces, and the warning for a text
whose pooled span comes out empty."""

from __future__ import annotations

import warnings

import pytest

from l2vf_support.official import reference_doc_cut
from llm2vec_fast import LLM2Vec
from llm2vec_fast.testing import make_tiny_checkpoint

SEP = "!@#$%^&*()"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("llama"), "llama", seed=3)


def _rel_err(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cpp", ["1", "0"])
def test_batched_doc_max_length_cut_equals_the_official_loop_per_text(
    llama_dir, seed, cpp, monkeypatch
):
    """TextProcessor.joined cuts all long texts at once (in C++ threads, or in Python rounds of
    batched counts with HF's tokenizer); llm2vec 0.2.3's _convert_to_str loops per text, as
    written out here over the HF tokenizer: the strings must be identical, several rounds
    included, except where the official loop empties a non-blank text (the deviation: cut
    by tokens instead, as l2vf_support.official.reference_doc_cut writes it out)."""
    import random

    monkeypatch.setenv("LLM2VEC_FAST_TOKENIZER", cpp)

    rng = random.Random(seed)
    words = ["cat", "markets,", "oil", "42", "naïve", "😀", "x" * 30, "don't", "a.b"]
    spaces = [" ", "  ", "\t", "\n", " \u3000 ", "\x1c", "\u2029"]
    pairs = []
    for _ in range(40):
        n = rng.choice([0, 1, 3, 8, 20, 60])
        text = "".join(rng.choice(words) + rng.choice(spaces) for _ in range(n))
        pairs.append((rng.choice(["", "Classify"]), text))
    pairs += [("", "x" * 200), ("Classify", "数字" * 50 + " 42")]  # emptied by the official cut
    model = LLM2Vec.from_pretrained(llama_dir, max_length=64, doc_max_length=6, device="cpu")
    tok = model.tokenizer

    def official(instruction, text):  # llm2vec 0.2.3 LLM2Vec._convert_to_str
        def n_tokens(t):
            ids = tok(t, truncation=True, max_length=64, add_special_tokens=False)["input_ids"]
            return len(ids)

        n, original = n_tokens(text), text
        while n > 6:
            text = " ".join(text.split()[: int(len(text.split()) * (6 / n))])
            n = n_tokens(text)
        if not text and original.split():  # the deviation
            text, _, how = reference_doc_cut(n_tokens, original, 6)
            assert how == "tokens" and text
            emptied.append(original)
        return f"{instruction.strip()} {SEP}{text}" if instruction else f"{SEP}{text}"

    emptied: list[str] = []

    expected = [model.prepare_for_tokenization(official(i, t)) for i, t in pairs]
    assert emptied[-2:] == ["x" * 200, "数字" * 50 + " 42"]
    assert model.text.joined(pairs) == expected
    assert [model._convert_to_str(i, t) for i, t in pairs[:10]] == [
        official(i, t) for i, t in pairs[:10]
    ]


NO_SPACES = [
    "a" * 3000,
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 10,
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODk" * 40,
    "x" * 2000 + " tail",
]


@pytest.mark.parametrize("cpp", ["1", "0"])
def test_long_text_without_spaces_is_cut_by_tokens_not_emptied(llama_dir, cpp, monkeypatch):
    """Deviation (README, "Differences, on purpose"): the official word cut turns a text
    without spaces that runs over doc_max_length into "" (a zero vector, no warning). Ours
    keeps a prefix within doc_max_length tokens, the same string with the C++ tokenizer and
    with HF's (the fallback), and embeds it, silently: nothing is empty."""
    monkeypatch.setenv("LLM2VEC_FAST_TOKENIZER", cpp)
    model = LLM2Vec.from_pretrained(llama_dir, max_length=64, doc_max_length=20, device="cpu")
    tok = model.tokenizer

    def n_tokens(t):
        return len(tok(t, truncation=True, max_length=64, add_special_tokens=False)["input_ids"])

    want = [reference_doc_cut(n_tokens, t, 20) for t in NO_SPACES]
    assert all(how == "tokens" and cut and n <= 20 for cut, n, how in want)
    cut = [c for c, _, _ in want]
    assert model.text.cut_texts(list(NO_SPACES)) == cut
    pairs = [["", t] for t in NO_SPACES] + [["Classify", t] for t in NO_SPACES]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*pooled span")
        ours = model.encode(pairs, show_progress_bar=False)
    assert bool((ours.norm(dim=1) > 0).all())
    ref = model.encode([["", c] for c in cut] + [["Classify", c] for c in cut],
                       show_progress_bar=False)  # fmt: skip
    assert _rel_err(ours, ref) < 1e-6
    # the instruction's embedding alone differs from the pair's
    alone = model.encode([["Classify", ""]], show_progress_bar=False)
    assert _rel_err(ours[len(cut) :], alone.expand(len(cut), -1)) > 1e-3


def test_encode_warns_when_a_pooled_span_is_empty(llama_dir):
    """A non-blank text of which no token is pooled (here: doc_max_length=1, and its first
    code point alone is several byte tokens) is embedded, with a warning naming its index; a
    blank text is the official behaviour, silently."""
    model = LLM2Vec.from_pretrained(llama_dir, max_length=64, doc_max_length=1, device="cpu")
    tag = "\U000e0001" * 5
    assert model.text.token_counts([tag[0]])[0] > 1 and model.text.cut_texts([tag]) == [""]
    items = ["fine", tag, "", ["Classify", tag], "a" * 300]
    with pytest.warns(UserWarning, match=r"2 non-blank texts have an empty pooled span.*\b1, 3\b"):
        out = model.encode(items, show_progress_bar=False)
    assert not bool(out[1].any()) and bool(out[3].any()) and bool(out[4].any())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*pooled span")
        model.encode(["fine", "", "a" * 300], show_progress_bar=False)
    with pytest.warns(UserWarning, match=r"9 non-blank texts .*\b0, 1, 2, 3, 4, \.\.\."):
        model.encode([tag] * 9, show_progress_bar=False)
    with pytest.warns(UserWarning, match=r"1 non-blank text has an empty pooled span.*\b2\b"):
        list(model.encode_iter(["a", "b", tag], show_progress_bar=False))
