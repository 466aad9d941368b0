"""The C++ tokenizer's API against HF ``tokenizers``: truncation (both sides), threads and
their order, generators and bad inputs (non-str, invalid UTF-8, lone surrogates), flat memory
over repeated calls, and the ids and pooled counts of instruction-joined strings."""

from __future__ import annotations

import threading

import pytest

from l2vf_support.memory import resident_memory_mb
from l2vf_support.official import SEP
from l2vf_support.tokenizer_variants import HFTokenizer, assert_same_ids, gensim_texts, pair


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
