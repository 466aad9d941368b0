"""The C++ BPE tokenizer against HF ``tokenizers``: identical ids, zero mismatches allowed.

Tokenizers: SmolLM2's real byte-level BPE (GPT-2 regex), Mistral-7B's real SentencePiece BPE
(from ``mistral-common``; skipped without it), and variants built here on those vocabularies
that exercise every supported component (Llama-3 / Qwen2 regexes, add_prefix_space,
ignore_merges, legacy Prepend+Replace, Metaspace with split, byte fallback and unk fusing,
added tokens with lstrip/rstrip and normalisation, Split behaviours, post-processors).
Texts: gensim's corpora, hypothesis-generated unicode, every code point class edge.
"""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import random
import re
import threading
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm2vec_fast.testing import (
    _QWEN2_NORMALIZER,
    _QWEN2_PRE_TOKENIZER,
    mistral_tokenizer_json,
    reference_doc_cut,
    resident_memory_mb,
    smollm2_tokenizer_json,
)
from llm2vec_fast.tokenizer import (
    GPT2_REGEX,
    LLAMA3_REGEX,
    QWEN2_REGEX,
    Tokenizer,
    UnsupportedTokenizerError,
)

tokenizers = pytest.importorskip("tokenizers")
HFTokenizer = tokenizers.Tokenizer
SEP = "!@#$%^&*()"


# ---------------------------------------------------------------------------
# tokenizer.json variants


def _smollm2() -> dict:
    return json.loads(smollm2_tokenizer_json())


def _small(d: dict, n: int = 3000) -> dict:
    """The same tokenizer on the first n tokens of its vocabulary (fast to load)."""
    vocab = {t: i for t, i in d["model"]["vocab"].items() if i < n}
    pairs = (m.split(" ") if isinstance(m, str) else m for m in d["model"]["merges"])
    merges = [[a, b] for a, b in pairs if a in vocab and b in vocab and a + b in vocab]
    d["model"].update(vocab=vocab, merges=merges)
    return d


def _template(before: list[str], after: list[str], vocab: dict) -> dict:
    def special(t):
        return {"SpecialToken": {"id": t, "type_id": 0}}

    single = [*map(special, before), {"Sequence": {"id": "A", "type_id": 0}}, *map(special, after)]
    return {
        "type": "TemplateProcessing",
        "single": single,
        "pair": [*single, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in before + after},
    }


def _added(content, token_id, *, lstrip=False, rstrip=False, normalized=False, special=True):
    return {"id": token_id, "content": content, "single_word": False, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}  # fmt: skip


def _sentencepiece_from_smollm2(words: bool = True) -> dict:
    """A SentencePiece-style (character) BPE made from SmolLM2's byte-level one: tokens that
    spell valid UTF-8 keep their ids with spaces as '▁', plus <0xXX> byte tokens and <unk>;
    characters outside it (most non-ASCII) go through byte fallback. With ``words``, tokens
    with a '▁' after another character are left out, as in real SentencePiece vocabularies
    (the C++ side then merges word by word); without, they stay (whole-piece merging)."""
    d = _smollm2()
    direct = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = direct + [256 + k for k in range(256 - len(direct))]
    to_byte = dict(zip(map(chr, chars), direct + [b for b in range(256) if b not in direct]))

    def convert(token: str) -> str | None:
        try:
            return bytes(to_byte[c] for c in token).decode("utf-8").replace(" ", "\u2581")
        except (KeyError, UnicodeDecodeError):
            return None

    vocab: dict[str, int] = {}
    for token, i in d["model"]["vocab"].items():
        c = convert(token) if not token.startswith("<|") else token
        if words and c is not None and re.search("[^\u2581]\u2581", c):
            continue
        if c is not None and c not in vocab:
            vocab[c] = i
    next_id = max(d["model"]["vocab"].values()) + 1
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = next_id + b
    vocab["<unk>"] = next_id + 256
    merges = []
    for m in d["model"]["merges"]:
        a, b = (convert(x) for x in (m.split(" ") if isinstance(m, str) else m))
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append([a, b])
    d["model"].update(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True,
                      unk_token="<unk>")  # fmt: skip
    d["added_tokens"].append(_added("<unk>", vocab["<unk>"]))
    d["pre_tokenizer"] = None
    d["decoder"] = None
    return d


@functools.lru_cache(maxsize=1)
def variants() -> dict[str, str]:
    """name -> tokenizer.json text"""
    out: dict[str, dict] = {}
    base = _smollm2()
    vocab = base["model"]["vocab"]
    out["smollm2"] = base

    d = _smollm2()
    d["pre_tokenizer"]["add_prefix_space"] = True
    d["post_processor"] = _template(["<|im_start|>"], ["<|im_end|>"], vocab)
    out["gpt2_prefix_space"] = d

    d = _smollm2()
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}  # fmt: skip
    d["model"]["ignore_merges"] = True
    d["post_processor"] = _template(["<|im_start|>"], [], vocab)
    out["llama3"] = d

    d = _smollm2()  # Qwen2's own normalizer (NFC) and pre-tokenizer
    d["normalizer"] = _QWEN2_NORMALIZER
    d["pre_tokenizer"] = _QWEN2_PRE_TOKENIZER
    assert d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_REGEX
    out["qwen2"] = d

    sp = _sentencepiece_from_smollm2()
    sp_vocab = sp["model"]["vocab"]
    d = copy.deepcopy(sp)  # Llama-2 as older transformers wrote it
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    ]}  # fmt: skip
    d["post_processor"] = _template(["<|im_start|>"], [], sp_vocab)
    out["sp_legacy"] = d

    d = copy.deepcopy(sp)  # Llama-2 / Mistral as transformers 5 writes them
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                          "split": False}  # fmt: skip
    out["sp_metaspace_first"] = d

    d = copy.deepcopy(sp)
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True}  # fmt: skip
    d["model"]["fuse_unk"] = False
    out["sp_metaspace_split"] = d

    d = _sentencepiece_from_smollm2(words=False)  # Gemma-like: spaces replaced, no prefix
    d["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    d["model"]["byte_fallback"] = False  # unknown characters: fused <unk>
    d["added_tokens"] += [
        _added("\n\n", 60000, special=False),
        _added("\u2581\u2581", 60001, normalized=True, special=False),
        _added("<table>", 60002, special=False),
        _added("\t\t", 60003, normalized=True, special=False),
    ]
    out["gemma_like"] = d

    d = _small(_smollm2())
    d["normalizer"] = {"type": "Strip", "strip_left": True, "strip_right": False}
    d["added_tokens"] += [
        _added("<mask>", 60000, lstrip=True),
        _added("[R]", 60001, rstrip=True),
        _added("hello", 60002, lstrip=True, rstrip=True, normalized=True, special=False),
        _added("<|im_start|>us", 60003, special=False),
        _added("\n\n", 60004, special=False),
    ]
    out["added_tokens_strip"] = d

    for behavior in ("Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
        for invert in (False, True):
            d = _small(_smollm2())
            d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"String": " "}, "behavior": behavior, "invert": invert},
                {"type": "Split", "pattern": {"Regex": GPT2_REGEX}, "behavior": behavior,
                 "invert": invert},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False},
            ]}  # fmt: skip
            out[f"split_{behavior}{'_inverted' if invert else ''}"] = d
    return {k: json.dumps(v) for k, v in out.items()}


@functools.cache
def pair(name: str) -> tuple[Tokenizer, HFTokenizer]:
    if name == "mistral":
        try:
            text = mistral_tokenizer_json()
        except ImportError as exc:
            pytest.skip(f"Mistral tokenizer unavailable: {exc}")
    else:
        text = variants()[name]
    return Tokenizer.from_str(text), HFTokenizer.from_str(text)


VARIANTS = ["smollm2", "gpt2_prefix_space", "llama3", "qwen2", "sp_legacy",
            "sp_metaspace_first", "sp_metaspace_split", "gemma_like", "added_tokens_strip",
            *(f"split_{b}{i}" for b in ("Removed", "MergedWithPrevious", "MergedWithNext",
                                        "Contiguous") for i in ("", "_inverted"))]  # fmt: skip
ALL = [*VARIANTS, "mistral"]
REAL = ["smollm2", "mistral"]


def assert_same_ids(name: str, texts: list[str], add_special_tokens: bool = True, **kw) -> None:
    ours, hf = pair(name)
    got = ours.encode_batch(texts, add_special_tokens, **kw)
    if kw.get("max_length") is not None:
        hf.enable_truncation(kw["max_length"], direction=kw.get("truncation_side", "right"))
    try:
        want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=add_special_tokens)]
    finally:
        hf.no_truncation()
    bad = [i for i in range(len(texts)) if got[i] != want[i]]
    if bad:
        i = bad[0]
        j = next((k for k, (a, b) in enumerate(zip(got[i], want[i])) if a != b), None)
        j = min(len(got[i]), len(want[i])) if j is None else j
        raise AssertionError(
            f"{name}: {len(bad)} of {len(texts)} texts differ; first {i}: {texts[i][:200]!r}\n"
            f"  first difference at id {j}: ours {got[i][max(0, j - 3) : j + 5]} "
            f"hf {want[i][max(0, j - 3) : j + 5]} (lengths {len(got[i])}, {len(want[i])})"
        )


@functools.lru_cache(maxsize=1)
def gensim_texts() -> list[str]:
    gensim = pytest.importorskip("gensim")
    data = pathlib.Path(gensim.__file__).parent / "test" / "test_data"
    texts = []
    for name in ("lee_background.cor", "lee.cor", "pang_lee_polarity.cor"):
        for line in (data / name).read_bytes().splitlines():
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError:  # a few lines are Latin-1 (e.g. '£')
                texts.append(line.decode("latin-1"))
    return texts


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
# truncation, threads, the pooled bookkeeping, API


@pytest.mark.parametrize("name", ["gpt2_prefix_space", "sp_legacy", "mistral"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation(name, side):
    texts = gensim_texts()[:20] + ["", "a", "a b"]
    for max_length in (2, 3, 64):
        assert_same_ids(name, texts, True, max_length=max_length, truncation_side=side)
        assert_same_ids(name, texts, False, max_length=max_length, truncation_side=side)


def test_truncation_shorter_than_specials():
    ours, _ = pair("gpt2_prefix_space")  # adds 2 special tokens
    with pytest.raises(ValueError, match="special tokens"):
        ours.encode_batch(["abc"], max_length=1)
    assert ours.encode_batch(["abc"], False, max_length=1) == [ours.encode("abc", False)[:1]]


def test_threads_and_order():
    ours, _ = pair("smollm2")
    texts = gensim_texts()
    one = ours.encode_batch(texts, num_threads=1)
    assert ours.encode_batch(texts, num_threads=3) == one
    ids, offsets = ours.encode_batch_arrays(texts, num_threads=2)
    assert ids.dtype.name == "int32" and offsets.dtype.name == "int64"
    assert [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == one
    assert ours.count_tokens(texts).tolist() == [len(x) for x in one]
    # several Python threads on one tokenizer at once (the GIL is released)
    results = {}

    def run(k):
        results[k] = ours.encode_batch(texts[k::4], num_threads=2)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert results[k] == one[k::4]


def test_generators_and_bad_inputs():
    ours, hf = pair("smollm2")
    assert ours.encode_batch(t for t in ["a b", "c"]) == [hf.encode("a b").ids, hf.encode("c").ids]
    assert ours.encode_batch([]) == []
    assert ours.encode("") == []
    with pytest.raises(TypeError, match="single str"):
        ours.encode_batch("abc")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str or UTF-8 bytes"):
        ours.encode_batch(["a", 3])
    # UTF-8 bytes are read as their text; invalid UTF-8 is refused, naming the input
    text = "naïve 😀 数字"
    assert ours.encode_batch([text.encode(), text]) == [hf.encode(text).ids] * 2
    assert ours.encode(text.encode()) == hf.encode(text).ids
    for bad in (b"\xff", b"ok \xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"):
        with pytest.raises(ValueError, match=r"texts\[2\] is not valid UTF-8"):
            ours.encode_batch(["fine", b"fine", bad])
    # lone surrogates cannot be UTF-8: refused cleanly (HF refuses them too)
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
        ours.encode_batch(["fine", "bad \ud800 text"])
    with pytest.raises(Exception):  # noqa: B017 (HF raises its own error type)
        hf.encode("bad \ud800 text")


def test_repeated_calls_keep_memory_flat():
    """Many batches through every entry point, errors included: no crash, and the process's
    resident memory stays flat once the word caches are warm."""
    ours, _ = pair("smollm2")
    texts = gensim_texts()[:300]
    joined = [f"Represent this {SEP}{t}" for t in texts[:100]]

    def rounds(n: int) -> None:
        for _ in range(n):
            ours.encode_batch(texts, max_length=128)
            ours.encode_batch_arrays(texts)
            ours.count_tokens(texts, add_special_tokens=False)
            ours.encode_pooled(joined, SEP, max_length=64)
            ours.doc_cut(texts[:100], 20, max_length=64)
            with pytest.raises(ValueError, match="not valid UTF-8"):
                ours.encode_batch(["a", b"\xff"])
            with pytest.raises(TypeError):
                ours.encode_batch(["a", None])

    rounds(5)
    start = resident_memory_mb()
    rounds(60)
    grown = resident_memory_mb() - start
    assert grown < 20, f"resident memory grew {grown:.1f} MB over 60 rounds"


@pytest.mark.parametrize("name", ["smollm2", "mistral", "sp_legacy"])
@pytest.mark.parametrize("max_length", [16, 512])
def test_encode_pooled_is_the_official_split(name, max_length):
    """ids of the joined string and the count of the text alone, as the official
    ``tokenize`` computes them (split on the separator, tokenize each)."""
    ours, hf = pair(name)
    texts = gensim_texts()[:120]
    joined = [f"Represent the text {SEP}{t}" for t in texts] + [
        "no separator",
        SEP,
        f"a{SEP}b{SEP}c",
    ]
    hf_trunc = HFTokenizer.from_str(hf.to_str())
    hf_trunc.enable_truncation(max_length)
    ids, counts = ours.encode_pooled(joined, SEP, max_length=max_length)
    for i, s in enumerate(joined):
        parts = s.split(SEP)
        assert ids[i] == hf_trunc.encode("".join(parts)).ids
        pooled = parts[1] if len(parts) > 1 else ""
        assert counts[i] == len(hf_trunc.encode(pooled, add_special_tokens=False).ids)
    ids2, whole = ours.encode_pooled(joined, SEP, max_length=max_length, count_pooled=False)
    assert ids2 == ids and whole.tolist() == [len(x) for x in ids]


def official_doc_cut(hf: HFTokenizer, text: str, doc_max_length: int):
    """llm2vec 0.2.3 ``_convert_to_str``'s loop over an HF tokenizer (truncating at max_length,
    no special tokens): the cut text, its final count, and whether it was cut."""

    def count(t):
        return len(hf.encode(t, add_special_tokens=False).ids)

    n = count(text)
    was_cut = n > doc_max_length
    while n > doc_max_length:
        text = " ".join(text.split()[: int(len(text.split()) * (doc_max_length / n))])
        n = count(text)
    return text, n, was_cut


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


def count_of(hf: HFTokenizer):
    return lambda t: len(hf.encode(t, add_special_tokens=False).ids)


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
# unsupported configurations: refused at load, naming the component


def _mutated(mutate) -> str:
    d = _smollm2()
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


# ---------------------------------------------------------------------------
# the encoder: instruction bookkeeping against the official embed_mask


def official_tokenize(tokenizer, texts: list[str], max_length: int):
    """llm2vec 0.2.3 ``LLM2Vec.tokenize`` (llm2vec/llm2vec.py), its logic unchanged: the joined
    string padded left, and an embed_mask of the last ``len(ids of the text alone)`` positions."""
    import torch

    texts_2, original_texts = [], []
    for text in texts:
        t = text.split(SEP)
        texts_2.append(t[1] if len(t) > 1 else "")
        original_texts.append("".join(t))
    original = tokenizer(original_texts, return_tensors="pt", padding=True, truncation=True,
                         max_length=max_length)  # fmt: skip
    rows = []
    for t_i, t in enumerate(texts_2):
        ids = tokenizer([t], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length, add_special_tokens=False)  # fmt: skip
        e_m = torch.zeros_like(original["attention_mask"][t_i])
        if len(ids["input_ids"][0]) > 0:
            e_m[-len(ids["input_ids"][0]) :] = torch.ones(len(ids["input_ids"][0]))
        rows.append(e_m)
    original["embed_mask"] = torch.stack(rows)
    return original


@functools.cache
def _tiny_cached(root: str, family: str, add_bos: bool) -> str:
    from llm2vec_fast.testing import make_tiny_checkpoint

    return str(make_tiny_checkpoint(pathlib.Path(root) / f"{family}-{add_bos}", family, seed=0,
                                    add_bos=add_bos))  # fmt: skip


def _tiny(tmp_path_factory, family: str, add_bos: bool) -> str:
    return _tiny_cached(str(tmp_path_factory.getbasetemp()), family, add_bos)


INSTRUCTIONS = [
    "",
    "Given a news article, retrieve articles on the same topic",
    "  Classify the sentiment of the review:  ",
    "Represent this sentence for searching relevant passages",
]


@pytest.mark.parametrize(("family", "add_bos", "max_length"),
                         [("llama", False, 24), ("llama", False, 512), ("mistral", True, 40)])  # fmt: skip
def test_pooled_counts_equal_official_embed_mask(tmp_path_factory, family, add_bos, max_length):
    """Over gensim's corpora with instructions, the ids and pooled counts the encoder packs
    (C++ tokenizer) are the official ``tokenize``'s input_ids and embed_mask."""
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.tokenizer import for_hf_tokenizer

    ckpt = _tiny(tmp_path_factory, family, add_bos)
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
