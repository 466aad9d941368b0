"""References that the tokenizer and encoder tests compare the fast paths with, written out
plainly, one text at a time: llm2vec 0.2.3's ``tokenize`` and doc_max_length loop, and our
doc_max_length cut with its one documented deviation (:func:`reference_doc_cut`)."""

from __future__ import annotations

SEP = "!@#$%^&*()"  # llm2vec 0.2.3's separator between instruction and text


def reference_doc_cut(count, text: str, doc_max_length: int) -> tuple[str, int, str]:
    """The doc_max_length cut written out plainly, one text at a time (tests' reference).

    ``count(s)`` is the number of tokens of ``s`` alone (no special tokens, truncated at
    max_length). First llm2vec 0.2.3's ``_convert_to_str`` loop: while over the limit, keep
    ``int(len(words) * (doc_max_length / n))`` of ``text.split()`` and count again. Where
    that empties a non-blank text (a single long "word": a line without spaces), the
    deviation instead: a prefix of the text, in whole code points, found by doubling a
    prefix of ``doc_max_length`` code points while its count stays within the limit, then
    bisecting; its count is within the limit and one more code point would exceed it.

    Returns (the cut text, its count, how: ``""`` not cut, ``"words"`` the official cut,
    ``"tokens"`` the deviation).
    """
    n = count(text)
    if n <= doc_max_length:
        return text, n, ""
    cut = text
    while n > doc_max_length:
        words = cut.split()
        cut = " ".join(words[: int(len(words) * (doc_max_length / n))])
        n = count(cut)
    if cut or not text.split():
        return cut, n, "words"
    size = len(text)
    lo, hi = 0, min(size, max(doc_max_length, 1))
    while hi < size and count(text[:hi]) <= doc_max_length:
        lo, hi = hi, min(size, 2 * hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(text[:mid]) <= doc_max_length:
            lo = mid
        else:
            hi = mid
    return text[:lo], count(text[:lo]), "tokens"


def official_doc_cut(hf, text: str, doc_max_length: int):
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


def count_of(hf):
    """``count(text)``: the number of ids of ``text`` alone under the HF tokenizer ``hf``."""
    return lambda t: len(hf.encode(t, add_special_tokens=False).ids)


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
