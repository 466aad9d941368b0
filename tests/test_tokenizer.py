"""The C++ BPE tokenizer against HF ``tokenizers``: identical ids, zero mismatches allowed.

Tokenizers: SmolLM2's real byte-level BPE (GPT-2 regex), Mistral-7B's real SentencePiece BPE
(from ``mistral-common``; skipped without it), and variants built here on those vocabularies
that exercise every supported component (Llama-3 / Qwen2 regexes, add_prefix_space,
ignore_merges, legacy Prepend+Replace, Metaspace with split, byte fallback and unk fusing,
added tokens with lstrip/rstrip and normalisation, Split behaviours, post-processors).
Texts: gensim's corpora, hypothesis-generated unicode, every code point class edge.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2vf_support.tokenizer_variants import (
    ALL,
    REAL,
    VARIANTS,
    assert_same_ids,
    gensim_texts,
    smollm2_dict,
    variants,
)
from llm2vec_fast.tokenizer import Tokenizer, UnsupportedTokenizerError

# ---------------------------------------------------------------------------
# parity


def test_variant_names():
    assert list(variants()) == VARIANTS


@pytest.mark.parametrize("name", ALL)
def test_gensim_corpora(name):
    texts = gensim_texts() if name in REAL else gensim_texts()[::5]
    assert_same_ids(name, texts, True)
    assert_same_ids(name, texts[::7], False)


EDGE_TEXTS = [
    "", " ", "  ", "\n", "\r\n\r\n", "\t \t", "a", "'", "'s", "'S", "'ſ", "don't", "DON'T",
    "we'RE here", "hello   world", "hello \n world", "x" * 3000, "\u2581", "\u2581\u2581 x",
    "<|im_start|>", "<|im_start|><|im_end|>", " <|im_start|> ", "<|im_start|>user\nhi",
    "<mask>", "  <mask>  [R]  end", "[R]\n\nx", "hello", "say hello!", "<table>", "\t\t\t",
    "<0x41>", "<unk>", "a\x00b", "\u0085\u00a0\u3000", "١٢٣٤٥", "12345678", "\u00b2\u00b3",
    "e\u0301\u0301", "😀👍🏽👨‍👩‍👧🇫🇷", "数字漢字カタカナ한국어", "\u200b\u200d\ufeff", "\U0001e4d0\u1c89",
    # NFC: composition, reordering of marks, blocking, Hangul, singletons, exclusions
    "e\u0301 A\u030a \u212b \u0958", "a\u0316\u0301 a\u0301\u0316", "\u0b47\u0b3e \u0b47\u0301\u0b3e",
    "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8", "\u0301abc", "q\u0307\u0323 \u1e0b\u0323",
    "a\u07fd\u0301 a\u0898\u0316",  # marks newer than Unicode 9.0: HF does not reorder them
]  # fmt: skip


@pytest.mark.parametrize("name", ALL)
def test_edge_cases(name):
    assert_same_ids(name, EDGE_TEXTS, True)
    assert_same_ids(name, EDGE_TEXTS, False)
    assert_same_ids(name, [""] * 5, True)


# random unicode: hypothesis
_pieces = st.sampled_from(
    [" ", "  ", "   ", "\n", "\r\n", "\t", "\u00a0", "\u3000", "'s", "'T", "'ll", "'Re", "'ſ",
     "the", " the", "ing", "Hello", "hello", "123", "2024", "...", "--", "(", ")", "<|im_start|>",
     "<|im_end|>", "<mask>", "[R]", "<table>", "\n\n", "\t\t", "\u2581", "<unk>", "<0x41>"]
)  # fmt: skip
_emoji = st.sampled_from(["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🙂"])
_text_piece = st.one_of(
    _pieces,
    _emoji,
    st.characters(exclude_categories=("Cs",)),  # any code point but surrogates
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
    st.characters(categories=("Mn", "Mc", "Me")),  # combining marks
    st.characters(categories=("Cc", "Cf", "Zs", "Zl", "Zp")),  # controls, spaces
    st.text(alphabet="abcxyzé ", min_size=30, max_size=300),  # long words
    st.characters(exclude_categories=("Cs",)).map(lambda c: unicodedata.normalize("NFD", c)),
)
TEXTS = st.lists(st.lists(_text_piece, max_size=25).map("".join), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=TEXTS, add_special_tokens=st.booleans())
def test_random_unicode(texts, add_special_tokens):
    for name in ALL:
        assert_same_ids(name, texts, add_special_tokens)


def _code_point_texts(step: int) -> list[str]:
    """Each code point (every `step`-th, plus the class edges) in contexts that exercise the
    regexes' letter / number / space / other classes."""
    special = [0x17F, 0x85, 0xA0, 0x1680, 0x2028, 0x202F, 0x205F, 0x3000, 0x1C89, 0x10D40,
               0x1E4D0, 0x31350, 0x2EBF0, 0xE01EF, 0x10FFFF]  # fmt: skip
    cps = sorted({*range(0, 0x110000, step), *special} - set(range(0xD800, 0xE000)))
    return [f"a{chr(c)}b {chr(c)}{chr(c)}1'{chr(c)} {chr(c)}" for c in cps]


@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen2", "sp_metaspace_first"])
def test_code_points_sampled(name):
    assert_same_ids(name, _code_point_texts(step=251), False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen2"])
def test_code_points_all(name):
    assert_same_ids(name, _code_point_texts(step=1), False)


# ---------------------------------------------------------------------------
# unsupported configurations: refused at load, naming the component


def _mutated(mutate) -> str:
    d = smollm2_dict()
    mutate(d)
    return json.dumps(d)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(normalizer={"type": "NFD"}), "normalizer NFD"),
        (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer Lowercase"),
        (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}]}), "NFKC"),
        (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer Whitespace"),
        (lambda d: d.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": r"\w+"},
                                           "behavior": "Isolated", "invert": False}), r"Split regex '\\\\w\+'"),
        (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel"}, {"type": "Digits", "individual_digits": True}]}), "after ByteLevel"),
        (lambda d: d.update(post_processor={"type": "BertLike"}), "post_processor BertLike"),
        (lambda d: d.update(padding={"strategy": "BatchLongest"}), "padding"),
        (lambda d: d["model"].update(type="WordPiece"), "model 'WordPiece'"),
        (lambda d: d["model"].update(dropout=0.1), "dropout"),
        (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
        (lambda d: d["added_tokens"][0].update(single_word=True), "single_word"),
        (lambda d: d["model"]["merges"].append("Ġzzz qqq"), "merge"),
    ],
)  # fmt: skip
def test_unsupported_is_refused_at_load(mutate, message):
    with pytest.raises(UnsupportedTokenizerError, match=message):
        Tokenizer.from_str(_mutated(mutate))
