"""Texts to token ids the official llm2vec way: join, doc cut, prompt wrap, tokenize.

:class:`TextProcessor` holds the tokenizer and the encoder settings that shape the ids
(``max_length``, ``doc_max_length``, ``skip_instruction``, ``pooling_mode`` for the eos_token
suffix, ``name_or_path`` for the official prompt wrapping). Where the C++ tokenizer can stand in
for the HF one (same ids, :func:`llm2vec_fast.tokenizer.for_hf_tokenizer`) it does, on C++
threads; the choice is made in one place, :attr:`TextProcessor.fast`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from llm2vec_fast.tokenizer import for_hf_tokenizer, token_cut

__all__ = ["SEP", "TextProcessor", "as_pairs", "iter_pairs", "join", "split_sep"]

SEP = "!@#$%^&*()"

# The official prompt wrapping, keyed on config ``_name_or_path``.
_LLAMA3_INSTRUCT = "meta-llama/Meta-Llama-3-8B-Instruct"
_INST_MODELS = ("mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-2-7b-chat-hf")
_GEMMA_IT = ("google/gemma-2-9b-it",)
_QWEN_INSTRUCT = ("Qwen/Qwen2-1.5B-Instruct", "Qwen/Qwen2-7B-Instruct")
# The literal text appended in eos_token mode, by model family.
_EOS_TEXT = {"llama": " </s>", "mistral": " </s>", "gemma": "<eos>", "qwen2": "<|endoftext|>"}


def join(instruction: str, text: str) -> str:
    """The official joining: ``instruction.strip() + " " + SEP + text``, or ``SEP + text``."""
    return f"{instruction.strip()} {SEP}{text}" if instruction else f"{SEP}{text}"


def split_sep(joined: str) -> tuple[str, str]:
    """The string the model sees (separators removed) and the part that is pooled."""
    parts = joined.split(SEP)
    return "".join(parts), parts[1] if len(parts) > 1 else ""


class TextProcessor:
    """Join, cut, wrap and tokenize ``(instruction, text)`` pairs (module docstring).

    The attributes may change after construction (``LLM2Vec`` forwards its own to them).
    """

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int,
        doc_max_length: int,
        skip_instruction: bool,
        pooling_mode: str,
        name_or_path: str = "",
        family: str = "",
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.doc_max_length = doc_max_length
        self.skip_instruction = skip_instruction
        self.pooling_mode = pooling_mode
        self.name_or_path = name_or_path
        self.family = family

    @property
    def fast(self):
        """The C++ tokenizer standing in for the HF one (same ids), or None."""
        return for_hf_tokenizer(self.tokenizer)

    @property
    def _truncation_side(self) -> str:
        return getattr(self.tokenizer, "truncation_side", "right")

    def prepare_for_tokenization(self, text: str) -> str:
        """The official prompt wrapping (keyed on ``_name_or_path``) and eos_token suffix."""
        name = self.name_or_path
        if name == _LLAMA3_INSTRUCT:
            return "<|start_header_id|>user<|end_header_id|>\n\n" + text.strip() + "<|eot_id|>"
        if name in _INST_MODELS:
            text = "[INST] " + text.strip() + " [/INST]"
        if name in _GEMMA_IT:
            text = "<bos><start_of_turn>user\n" + text.strip() + "<end_of_turn>"
        if name in _QWEN_INSTRUCT:
            text = "<|im_start|>user\n" + text.strip() + "<|im_end|>"
        if self.pooling_mode == "eos_token":
            if name == "meta-llama/Meta-Llama-3-8B":
                text = text.strip() + "<|end_of_text|>"
            elif self.family in _EOS_TEXT:
                text = text.strip() + _EOS_TEXT[self.family]
        return text

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text alone (no special tokens), capped at max_length."""
        if not texts:
            return []
        fast = self.fast
        if fast is not None:
            return fast.count_tokens(
                texts,
                add_special_tokens=False,
                max_length=self.max_length,
                truncation_side=self._truncation_side,
            ).tolist()
        enc = self.tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=self.max_length
        )
        return [len(ids) for ids in enc["input_ids"]]

    def convert_to_str(self, instruction: str, text: str) -> str:
        """``instruction.strip() + " " + SEP + text`` (``SEP + text`` without instruction),
        after the doc_max_length cut."""
        return join(instruction, self.cut_texts([text])[0])

    def joined(self, pairs: list[tuple[str, str]]) -> list[str]:
        """:meth:`convert_to_str` then :meth:`prepare_for_tokenization` for many pairs: the
        doc_max_length cut on C++ threads when the C++ tokenizer stands in, else in rounds
        of batched counts (the same strings as the official loop, text by text)."""
        texts = self.cut_texts([t for _, t in pairs])
        prepare = self.prepare_for_tokenization
        return [prepare(join(instruction, text)) for (instruction, _), text in zip(pairs, texts)]

    def cut_texts(self, texts: list[str]) -> list[str]:
        """Each text after the official doc_max_length cut; where that empties a non-blank
        text (no spaces: one long "word"), cut by tokens instead, a deviation from llm2vec
        0.2.3 (:meth:`llm2vec_fast.tokenizer.Tokenizer.doc_cut`), the same with either
        tokenizer."""
        fast = self.fast
        if fast is not None:
            _, cut = fast.doc_cut(
                texts,
                self.doc_max_length,
                max_length=self.max_length,
                truncation_side=self._truncation_side,
            )
            return [t if c is None else c for t, c in zip(texts, cut)]
        texts = list(texts)
        counts = self.token_counts(texts)
        limit = self.doc_max_length
        over = [i for i, n in enumerate(counts) if n > limit]
        # In rounds over all the texts still too long; each text is split once (the words of
        # " ".join(words[:k]) are words[:k]).
        words = {i: texts[i].split() for i in over}
        source = {i: texts[i] for i in over if words[i]}  # the non-blank ones, uncut
        while over:
            for i in over:
                words[i] = words[i][: int(len(words[i]) * (limit / counts[i]))]
                texts[i] = " ".join(words[i])
            for i, n in zip(over, self.token_counts([texts[i] for i in over])):
                counts[i] = n
            over = [i for i in over if counts[i] > limit]
        emptied = [i for i in source if not words[i]]
        for i, cut in zip(
            emptied, token_cut([source[i] for i in emptied], limit, self.token_counts)
        ):
            texts[i] = cut
        return texts

    def token_arrays(self, joined: list[str]):
        """Token ids of each joined string and the length of its pooled span, in the form the
        packer reads fastest: ``(ids int32 [total], offsets int64 [n + 1], counts int64 [n])``
        from the C++ tokenizer (no Python list per text), or ``(id lists, None, counts)``
        from HF ``tokenizers``."""
        fast = self.fast
        if fast is not None:  # the same split and both tokenizations, on C++ threads
            return fast.encode_pooled(
                joined,
                SEP,
                max_length=self.max_length,
                truncation_side=self._truncation_side,
                count_pooled=self.skip_instruction,
                as_arrays=True,
            )
        full, pooled = zip(*(split_sep(s) for s in joined))
        ids = self.tokenizer(list(full), truncation=True, max_length=self.max_length)["input_ids"]
        if not self.skip_instruction:
            return ids, None, np.array([len(x) for x in ids], dtype=np.int64)
        return ids, None, np.asarray(self.token_counts(list(pooled)), dtype=np.int64)

    def token_ids(self, joined: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each joined string (lists) and the length of its pooled span."""
        ids, offsets, counts = self.token_arrays(joined)
        if offsets is None:
            return ids, counts.tolist()
        bounds = offsets.tolist()
        flat = ids.tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])], counts.tolist()

    def padded(self, joined: list[str]) -> dict:
        """Official ``tokenize``: joined strings (with SEP) -> a left-padded batch dict with
        ``input_ids``, ``attention_mask`` and ``embed_mask`` (1 on the pooled text tokens)."""
        import torch

        full, pooled = zip(*(split_sep(t) for t in joined))
        features = self.tokenizer(
            list(full),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        )
        counts = self.token_counts(list(pooled))
        embed_mask = torch.zeros_like(features["attention_mask"])
        for i, n in enumerate(counts):
            if n > 0:
                embed_mask[i, -n:] = 1
        features["embed_mask"] = embed_mask
        return features


# ------------------------------------------------------------------------------ input forms


def _pair(i: int, s) -> tuple[str, str]:
    if isinstance(s, str):
        return ("", s)
    if (
        isinstance(s, (list, tuple))
        and len(s) >= 2
        and isinstance(s[0], str)
        and isinstance(s[1], str)
    ):
        return (s[0], s[1])
    what = "None" if s is None else type(s).__name__
    if isinstance(s, (list, tuple)):
        what = f"{what} of {[type(x).__name__ for x in s]}"
    raise TypeError(
        f"sentence {i} is {what}; expected a string or an [instruction, text] pair of strings"
    )


class PairStream:
    """An iterator of input items checked one at a time, as :func:`as_pairs` checks a list."""

    def __init__(self, items: Iterator):
        self._items = items
        self._i = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, str]:
        item = next(self._items)
        pair = _pair(self._i, item)
        self._i += 1
        return pair


def iter_pairs(sentences) -> list[tuple[str, str]] | PairStream:
    """:func:`as_pairs` for lists and other collections (all checked now); an iterator or
    generator becomes a :class:`PairStream`, checked as it is read."""
    if isinstance(sentences, Iterator) and not isinstance(sentences, (str, bytes)):
        return PairStream(sentences)
    return as_pairs(sentences)


def as_pairs(sentences) -> list[tuple[str, str]]:
    """Normalise the accepted input forms to ``(instruction, text)`` pairs; clear errors."""
    if sentences is None:
        raise TypeError(
            "encode() got None; expected a string or a list of strings / [instruction, text] pairs"
        )
    if isinstance(sentences, str):
        return [("", sentences)]
    if isinstance(sentences, (bytes, bytearray)):
        raise TypeError("encode() got bytes; decode them to str first")
    if isinstance(sentences, np.ndarray):
        sentences = sentences.tolist()
    if not isinstance(sentences, (list, tuple)):
        try:
            sentences = list(sentences)
        except TypeError:
            raise TypeError(
                f"encode() expected a string or a list of texts; got {type(sentences).__name__}"
            ) from None
    if len(sentences) == 0:
        raise ValueError("encode() got an empty list of sentences")
    # one MEDI item: [instruction, text, ..., int]. Two strings come first, so a flat list
    # with a number in it (["a", 3], ["a", None, 3]) stays a list whose bad item is named.
    if (
        len(sentences) >= 3
        and isinstance(sentences[0], str)
        and isinstance(sentences[1], str)
        and isinstance(sentences[-1], int)
        and not isinstance(sentences[-1], bool)
    ):
        sentences = [sentences]
    return [_pair(i, s) for i, s in enumerate(sentences)]
