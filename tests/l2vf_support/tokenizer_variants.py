"""tokenizer.json variants that exercise every component the C++ tokenizer supports, built on
SmolLM2's real byte-level BPE (and a SentencePiece-style BPE made from it), plus Mistral-7B's real
tokenizer; the texts (gensim's corpora) and the parity check against HF ``tokenizers``."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import re

import pytest
from tokenizers import Tokenizer as HFTokenizer

from llm2vec_fast.testing import QWEN2_NORMALIZER, QWEN2_PRE_TOKENIZER, smollm2_tokenizer_json
from llm2vec_fast.tokenizer import GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX, Tokenizer

from .mistral import mistral_tokenizer_json


def smollm2_dict() -> dict:
    """SmolLM2's tokenizer.json as a dict (a fresh copy each call)."""
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
    d = smollm2_dict()
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
    base = smollm2_dict()
    vocab = base["model"]["vocab"]
    out["smollm2"] = base

    d = smollm2_dict()
    d["pre_tokenizer"]["add_prefix_space"] = True
    d["post_processor"] = _template(["<|im_start|>"], ["<|im_end|>"], vocab)
    out["gpt2_prefix_space"] = d

    d = smollm2_dict()
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}  # fmt: skip
    d["model"]["ignore_merges"] = True
    d["post_processor"] = _template(["<|im_start|>"], [], vocab)
    out["llama3"] = d

    d = smollm2_dict()  # Qwen2's own normalizer (NFC) and pre-tokenizer
    d["normalizer"] = QWEN2_NORMALIZER
    d["pre_tokenizer"] = QWEN2_PRE_TOKENIZER
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

    d = _small(smollm2_dict())
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
            d = _small(smollm2_dict())
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
    """(ours, HF's) tokenizers of variant ``name`` (``mistral``: skipped without its file)."""
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
    """Our ids equal HF's for every text (else: the first difference, in context)."""
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
    """The lines of gensim's three test corpora (skipped without gensim)."""
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
