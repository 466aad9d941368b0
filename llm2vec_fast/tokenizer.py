"""A C++ BPE tokenizer that gives exactly the ids of HF ``tokenizers`` for a ``tokenizer.json``.

``Tokenizer.from_file("tokenizer.json")`` reads the file, checks that every component it
declares is one this implementation reproduces (:mod:`llm2vec_fast.tokenizer_json`), and
builds the C++ tokenizer (``llm2vec_fast._C.BPETokenizer``, ``csrc/bpe_tokenizer.h``). Batches
run on C++ threads with the GIL released.

Supported (what LLM2Vec's model families use):

- model: ``BPE`` (merges by rank, ``byte_fallback``, ``unk_token`` with ``fuse_unk``,
  ``ignore_merges``; no dropout, no subword prefix/suffix);
- normalizer: none, ``Sequence``, ``Prepend``, ``Replace`` (a literal string), ``Strip``,
  ``NFC`` (Unicode 9.0 tables, as HF's);
- pre-tokenizer: none, ``Sequence``, ``ByteLevel`` (last), ``Metaspace``, ``Split`` with a
  literal string or one of the GPT-2, Llama-3 and Qwen2 regexes (written out in
  ``csrc/tokenizer_spec.h``);
- post-processor: none, ``TemplateProcessing``, ``RobertaProcessing``, ``BertProcessing``,
  ``ByteLevel``, ``Sequence``;
- added tokens (special or not, normalised or not, ``lstrip``/``rstrip``); ``truncation``.

Anything else (an NFKC or Lowercase normalizer, another regex, ``single_word`` added tokens,
padding, a WordPiece model...) raises :class:`UnsupportedTokenizerError` at load time, naming
it; :class:`~llm2vec_fast.LLM2Vec` then keeps the HF tokenizer.
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import numpy as np

try:
    import llm2vec_fast._C as _C
except ImportError as exc:  # not built
    _C = None
    _EXTENSION_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _EXTENSION_ERROR = None

from llm2vec_fast.tokenizer_json import GPT2_REGEX as GPT2_REGEX
from llm2vec_fast.tokenizer_json import LLAMA3_REGEX as LLAMA3_REGEX
from llm2vec_fast.tokenizer_json import QWEN2_REGEX as QWEN2_REGEX
from llm2vec_fast.tokenizer_json import UnsupportedTokenizerError, build_spec

__all__ = ["Tokenizer", "UnsupportedTokenizerError", "for_hf_tokenizer"]


class Tokenizer:
    """HF-``tokenizers``-exact BPE tokenization in C++, batched over threads.

    Build it with :meth:`from_file`, :meth:`from_str` or :meth:`from_hf`. ``num_threads``
    (default: every core, or ``$LLM2VEC_FAST_TOKENIZER_THREADS``) applies to batch calls.
    """

    def __init__(self, data: dict[str, Any], *, num_threads: int | None = None) -> None:
        if _C is None:
            raise ImportError(f"llm2vec_fast._C is not built ({_EXTENSION_ERROR})")
        spec, self._truncation = build_spec(data)
        try:
            self._tok = _C.BPETokenizer(spec)
        except ValueError as exc:  # e.g. a merge of tokens not in the vocab
            raise UnsupportedTokenizerError(f"tokenizer.json: {exc}") from exc
        env = os.environ.get("LLM2VEC_FAST_TOKENIZER_THREADS")
        self.num_threads = int(num_threads if num_threads is not None else env or 0)
        self.added_token_ids = {c: i for c, i, *_ in spec["added_tokens"]}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Read a ``tokenizer.json``."""
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), **kwargs)

    @classmethod
    def from_str(cls, text: str, **kwargs: Any) -> Tokenizer:
        """Parse ``tokenizer.json`` text."""
        return cls(json.loads(text), **kwargs)

    @classmethod
    def from_hf(cls, tokenizer: Any, **kwargs: Any) -> Tokenizer:
        """From a ``tokenizers.Tokenizer`` or a transformers fast tokenizer (its backend)."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        return cls.from_str(backend.to_str(), **kwargs)

    # -- the calls

    def _options(
        self, max_length: int | None, truncation_side: str | None, num_threads: int | None
    ) -> dict[str, Any]:
        """The native calls' ``max_length``, ``truncate_left`` and ``num_threads`` arguments."""
        limit, left = self._limits(max_length, truncation_side)
        threads = int(self.num_threads if num_threads is None else num_threads)
        return {"max_length": limit, "truncate_left": left, "num_threads": threads}

    def _limits(self, max_length: int | None, truncation_side: str | None) -> tuple[int, bool]:
        if truncation_side not in (None, "right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {truncation_side!r}")
        if max_length is None:
            if self._truncation is None:
                return -1, False
            left = (
                self._truncation["left"] if truncation_side is None else truncation_side == "left"
            )
            return self._truncation["max_length"], left
        if max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        return int(max_length), truncation_side == "left"

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        """The ids of one text, a str or UTF-8 bytes (keyword arguments as
        :meth:`encode_batch`)."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be a str or UTF-8 bytes, got {type(text).__name__}")
        return self.encode_batch([text], add_special_tokens, num_threads=1, **kwargs)[0]

    def encode_batch(
        self,
        texts: Sequence[str] | Iterable[str],
        add_special_tokens: bool = True,
        *,
        max_length: int | None = None,
        truncation_side: str | None = None,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """The ids of each text, as HF ``Tokenizer.encode_batch(...)[i].ids``.

        A text is a str or UTF-8 bytes; bytes that are not valid UTF-8 (and a str with lone
        surrogates) raise ``ValueError`` naming the text's index. ``max_length`` truncates (special tokens included, as ``transformers`` with
        ``truncation=True``); None uses the file's own truncation, if any.
        """
        options = self._options(max_length, truncation_side, num_threads)
        return self._tok.encode_batch(texts, add_special_tokens, **options)

    def encode_batch_arrays(
        self,
        texts: Sequence[str] | Iterable[str],
        add_special_tokens: bool = True,
        *,
        max_length: int | None = None,
        truncation_side: str | None = None,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`encode_batch`, flat: ids int32 ``[total]`` and offsets int64 ``[n + 1]``
        (text ``i`` is ``ids[offsets[i]:offsets[i + 1]]``), the packer's input."""
        options = self._options(max_length, truncation_side, num_threads)
        return self._tok.encode_batch(texts, add_special_tokens, **options, as_arrays=True)

    def count_tokens(
        self,
        texts: Sequence[str] | Iterable[str],
        add_special_tokens: bool = True,
        *,
        max_length: int | None = None,
        truncation_side: str | None = None,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """``len(ids)`` of each text, int64 ``[n]``, without building the id lists."""
        options = self._options(max_length, truncation_side, num_threads)
        return self._tok.count(texts, add_special_tokens, **options)

    def encode_pooled(
        self,
        texts: Sequence[str] | Iterable[str],
        separator: str,
        *,
        max_length: int | None = None,
        truncation_side: str | None = None,
        num_threads: int | None = None,
        count_pooled: bool = True,
        as_arrays: bool = False,
    ) -> tuple:
        """The LLM2Vec instruction bookkeeping, for texts ``instruction + separator + text``.

        For each ``parts = s.split(separator)``: the ids of ``"".join(parts)`` (special
        tokens added, truncated to ``max_length``), and the count of pooled tokens, the
        official ``len(tokenize(parts[1], add_special_tokens=False, truncated to max_length))``
        (0 without a separator): the text tokenized alone, not its share of the joined ids.
        With ``count_pooled=False`` the count is the number of ids of the whole sequence
        (no second tokenization). Returns (ids lists, counts int64 ``[n]``), or with
        ``as_arrays`` (ids int32 ``[total]``, offsets int64 ``[n + 1]``, counts int64 ``[n]``),
        the packer's input without a Python list per text.
        """
        options = self._options(max_length, truncation_side, num_threads)
        return self._tok.encode_pooled(
            texts, separator, **options, count_pooled=count_pooled, as_arrays=as_arrays
        )

    def doc_cut(
        self,
        texts: Sequence[str] | Iterable[str],
        doc_max_length: int,
        *,
        max_length: int | None = None,
        truncation_side: str | None = None,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """The official llm2vec ``doc_max_length`` cut, on C++ threads.

        For each text: ``n`` = its token count (no special tokens, capped at ``max_length``);
        while ``n > doc_max_length``, keep the first ``int(len(words) * (doc_max_length / n))``
        of its ``str.split()`` words joined by single spaces, and count again. Where that
        empties a non-blank text (no spaces: one long "word" such as a Japanese line, base64
        or minified code), the text is cut by tokens instead, a deviation from llm2vec 0.2.3:
        the prefix :func:`prefix_search` finds, within ``doc_max_length`` tokens (empty only
        when its first code point alone is over the limit). Returns the final counts (int64
        ``[n]``) and the cut texts (None where a text was not cut).
        """
        options = self._options(max_length, truncation_side, num_threads)
        return self._tok.doc_cut(texts, int(doc_max_length), **options)


def prefix_search(text: str, limit: int) -> Generator[int, int, int]:
    """The token cut of one text (where the official word cut would empty it), as a
    generator: it yields prefix lengths in code points, is sent each prefix's token count,
    and returns the length to keep (``StopIteration.value``).

    A prefix of ``limit`` code points doubles while its count stays ``<= limit``; then the
    last prefix that fit and the first that did not are bisected. The kept prefix fits, and
    one more code point would not. ``Tokenizer.doc_cut`` probes the same lengths in C++
    (csrc/tokenizer_batch.cpp), so both give the same prefix from the same counts.
    """
    size = len(text)
    lo, hi = 0, min(size, max(limit, 1))
    while hi < size:
        if (yield hi) > limit:
            break
        lo, hi = hi, min(size, 2 * hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (yield mid) <= limit:
            lo = mid
        else:
            hi = mid
    return lo


def token_cut(
    texts: Sequence[str], limit: int, count: Callable[[list[str]], Sequence[int]]
) -> list[str]:
    """:func:`prefix_search` over many texts, in rounds of one batched ``count`` call (token
    counts of a list of strings): the prefix of each text to keep."""
    searches = [prefix_search(t, limit) for t in texts]
    kept = [0] * len(texts)
    probes: dict[int, int] = {}

    def advance(i: int, n: int | None) -> None:
        try:
            probes[i] = next(searches[i]) if n is None else searches[i].send(n)
        except StopIteration as stop:
            kept[i] = stop.value

    for i in range(len(texts)):
        advance(i, None)
    while probes:
        batch = list(probes.items())
        probes.clear()
        for (i, _), n in zip(batch, count([texts[i][:m] for i, m in batch])):
            advance(i, int(n))
    return [t[:k] for t, k in zip(texts, kept)]


# ---------------------------------------------------------------------------
# standing in for a transformers tokenizer

# Strings whose ids must come out the same as the transformers tokenizer's own before ours
# stands in for it (a guard against anything transformers does beyond its backend).
_PROBES = [
    "",
    " ",
    "Hello world!",
    "  two  spaces\n\tand a tab\r\n",
    "I'm sure you'll SEE it's 42.",
    "数字 123 ñandú café 😀 e\u0301",
    "<s></s><unk><|im_start|><|endoftext|> [INST] x",
]
_FOR_HF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def for_hf_tokenizer(hf_tokenizer: Any) -> Tokenizer | None:
    """Our tokenizer standing in for a transformers fast tokenizer, or None to keep HF's.

    None when the extension is not built, the tokenizer is not a fast one, special tokens are
    split (``split_special_tokens``), its ``tokenizer.json`` asks for something unsupported,
    ``$LLM2VEC_FAST_TOKENIZER`` is ``0``, or the two disagree on a few probe strings. Cached
    per tokenizer object (weakly).
    """
    if os.environ.get("LLM2VEC_FAST_TOKENIZER", "1").lower() in ("0", "false", "no", "hf"):
        return None
    try:
        return _FOR_HF[hf_tokenizer]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable
        return None
    fast = _build_for_hf(hf_tokenizer)
    _FOR_HF[hf_tokenizer] = fast
    return fast


def _build_for_hf(hf_tokenizer: Any) -> Tokenizer | None:
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if _C is None or backend is None or not getattr(hf_tokenizer, "is_fast", False):
        return None
    if getattr(hf_tokenizer, "split_special_tokens", False) or getattr(
        backend, "encode_special_tokens", False
    ):
        return None
    data = json.loads(backend.to_str())
    # transformers leaves the truncation / padding of its last call on the backend; our calls
    # say their own max_length, and never pad
    data["truncation"] = None
    data["padding"] = None
    try:
        fast = Tokenizer(data)
    except UnsupportedTokenizerError:
        return None
    for add in (True, False):
        want = hf_tokenizer(_PROBES, add_special_tokens=add)["input_ids"]
        if fast.encode_batch(_PROBES, add) != [list(x) for x in want]:
            warnings.warn(
                "llm2vec_fast: the C++ tokenizer disagrees with the HF tokenizer on a probe "
                "string; keeping the HF tokenizer (please report this)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
    return fast
