"""A C++ BPE tokenizer that gives exactly the ids of HF ``tokenizers`` for a ``tokenizer.json``.

``Tokenizer.from_file("tokenizer.json")`` reads the file, checks that every component it
declares is one this implementation reproduces, and builds the C++ tokenizer
(``llm2vec_fast._C.BPETokenizer``, ``csrc/bpe_tokenizer.cpp``). Batches run on C++ threads
with the GIL released.

Supported (what LLM2Vec's model families use):

- model: ``BPE`` (merges by rank, ``byte_fallback``, ``unk_token`` with ``fuse_unk``,
  ``ignore_merges``; no dropout, no subword prefix/suffix);
- normalizer: none, ``Sequence``, ``Prepend``, ``Replace`` (a literal string), ``Strip``,
  ``NFC`` (Unicode 9.0 tables, as HF's);
- pre-tokenizer: none, ``Sequence``, ``ByteLevel`` (last), ``Metaspace``, ``Split`` with a
  literal string or one of the GPT-2, Llama-3 and Qwen2 regexes (written out in
  ``csrc/bpe_tokenizer.h``);
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
    from llm2vec_fast import _C
except ImportError as exc:  # not built
    _C = None
    _EXTENSION_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _EXTENSION_ERROR = None

__all__ = ["Tokenizer", "UnsupportedTokenizerError", "for_hf_tokenizer"]


class UnsupportedTokenizerError(ValueError):
    """The tokenizer.json asks for something this tokenizer does not reproduce."""


# The pre-tokenisation regexes with a hand-written matcher in C++ (RegexKind there).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
_REGEXES = {GPT2_REGEX: 0, LLAMA3_REGEX: 1, QWEN2_REGEX: 2}
_BEHAVIORS = {
    "Removed": 0,
    "Isolated": 1,
    "MergedWithPrevious": 2,
    "MergedWithNext": 3,
    "Contiguous": 4,
}
_PREPEND_SCHEMES = {"always": 0, "first": 1, "never": 2}
# Rust's char::is_whitespace (Unicode White_Space), for Strip
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _unsupported(what: str) -> UnsupportedTokenizerError:
    return UnsupportedTokenizerError(f"tokenizer.json: {what} is not supported")


# ---------------------------------------------------------------------------
# tokenizer.json -> the C++ spec


def _flatten(node: dict | None, kind: str, key: str) -> list[dict]:
    if node is None:
        return []
    if not isinstance(node, dict) or "type" not in node:
        raise _unsupported(f"{kind} {node!r}")
    if node["type"] == "Sequence":
        return [step for child in node[key] for step in _flatten(child, kind, key)]
    return [node]


def _normalizer_steps(node: dict | None) -> list[dict]:
    steps = []
    for n in _flatten(node, "normalizer", "normalizers"):
        kind = n["type"]
        if kind == "Prepend":
            steps.append({"type": "prepend", "prepend": n["prepend"]})
        elif kind == "Replace":
            pattern = n["pattern"]
            if "String" not in pattern:
                raise _unsupported(f"normalizer Replace with a regex pattern ({pattern!r})")
            if pattern["String"] == "":
                raise _unsupported("normalizer Replace with an empty pattern")
            steps.append({"type": "replace", "pattern": pattern["String"], "content": n["content"]})
        elif kind == "NFC":
            steps.append({"type": "nfc"})
        elif kind == "Strip":
            steps.append(
                {"type": "strip", "left": bool(n["strip_left"]), "right": bool(n["strip_right"])}
            )
        else:
            raise _unsupported(f"normalizer {kind}")
    return steps


def _apply_normalizer(steps: list[dict], text: str) -> str:
    """What the normalizer makes of an added token's content (HF normalises those)."""
    for s in steps:
        if s["type"] == "prepend":
            text = s["prepend"] + text if text else text
        elif s["type"] == "replace":
            text = text.replace(s["pattern"], s["content"])
        elif s["type"] == "nfc":
            # NFC changes nothing below U+0300; above, HF uses Unicode 9.0 tables, which
            # Python's unicodedata is not
            if any(ord(c) >= 0x300 for c in text):
                raise _unsupported(f"normalised added token {text!r} under NFC")
        elif s["type"] == "strip":
            if s["left"]:
                while text and text[0] in _WHITE_SPACE:
                    text = text[1:]
            if s["right"]:
                while text and text[-1] in _WHITE_SPACE:
                    text = text[:-1]
    return text


def _pre_tokenizer_steps(node: dict | None, has_normalizer: bool) -> list[dict]:
    steps = []
    nodes = _flatten(node, "pre_tokenizer", "pretokenizers")
    for k, n in enumerate(nodes):
        kind = n["type"]
        if kind == "ByteLevel":
            if k != len(nodes) - 1:
                raise _unsupported("a pre-tokenizer after ByteLevel")
            steps.append(
                {
                    "type": "byte_level",
                    "add_prefix_space": bool(n.get("add_prefix_space", True)),
                    "use_regex": bool(n.get("use_regex", True)),
                }
            )
        elif kind == "Split":
            pattern, behavior = n["pattern"], n["behavior"]
            if behavior not in _BEHAVIORS:
                raise _unsupported(f"Split behavior {behavior!r}")
            step = {"behavior": _BEHAVIORS[behavior], "invert": bool(n.get("invert", False))}
            if "String" in pattern:
                if pattern["String"] == "":
                    raise _unsupported("Split with an empty pattern")
                step.update(type="split_string", pattern=pattern["String"])
            elif pattern.get("Regex") in _REGEXES:
                step.update(type="split_regex", regex=_REGEXES[pattern["Regex"]])
            else:
                raise _unsupported(
                    f"Split regex {pattern.get('Regex')!r} (known: the GPT-2, Llama-3 and Qwen2 "
                    "pre-tokenisation regexes)"
                )
            steps.append(step)
        elif kind == "Metaspace":
            replacement = n["replacement"]
            if len(replacement) != 1:
                raise _unsupported(f"Metaspace replacement {replacement!r}")
            scheme = n.get("prepend_scheme", "always")
            if n.get("add_prefix_space") is False:
                if scheme != "never":
                    raise _unsupported("Metaspace add_prefix_space=false with a prepend_scheme")
                scheme = "never"
            if scheme not in _PREPEND_SCHEMES:
                raise _unsupported(f"Metaspace prepend_scheme {scheme!r}")
            # "first" looks at original offsets; we track them only where no normaliser and no
            # earlier pre-tokeniser can move them.
            if scheme == "first" and (has_normalizer or k != 0):
                raise _unsupported(
                    "Metaspace prepend_scheme='first' after a normalizer or another pre-tokenizer"
                )
            steps.append(
                {
                    "type": "metaspace",
                    "replacement": replacement,
                    "prepend_scheme": _PREPEND_SCHEMES[scheme],
                    "split": bool(n.get("split", True)),
                }
            )
        else:
            raise _unsupported(f"pre_tokenizer {kind}")
    return steps


def _post_processor(node: dict | None) -> tuple[list[int], list[int]]:
    """Special-token ids before and after a single sequence."""
    prefix: list[int] = []
    suffix: list[int] = []
    for n in _flatten(node, "post_processor", "processors"):
        kind = n["type"]
        if kind == "ByteLevel":
            continue  # offsets only
        if kind in ("RobertaProcessing", "BertProcessing"):
            prefix, suffix = [int(n["cls"][1]), *prefix], [*suffix, int(n["sep"][1])]
            continue
        if kind != "TemplateProcessing":
            raise _unsupported(f"post_processor {kind}")
        before: list[int] = []
        after: list[int] = []
        seen = 0
        for piece in n["single"]:
            if "Sequence" in piece:
                if piece["Sequence"]["id"] != "A":
                    raise _unsupported("TemplateProcessing single template using $B")
                seen += 1
            else:
                name = piece["SpecialToken"]["id"]
                special = n["special_tokens"].get(name)
                if special is None:
                    raise _unsupported(f"TemplateProcessing special token {name!r} without ids")
                (after if seen else before).extend(int(i) for i in special["ids"])
        if seen != 1:
            raise _unsupported("TemplateProcessing single template without exactly one $A")
        prefix, suffix = [*before, *prefix], [*suffix, *after]
    return prefix, suffix


def _merges(raw: list) -> list[tuple[str, str]]:
    merges = []
    lines = [m for m in raw if not (isinstance(m, str) and m.startswith("#version"))]
    for rank, m in enumerate(lines):
        if isinstance(m, str):
            parts = m.split(" ")
            if len(parts) != 2:
                raise UnsupportedTokenizerError(f"tokenizer.json: bad merge {rank + 1}: {m!r}")
            merges.append((parts[0], parts[1]))
        else:
            a, b = m
            merges.append((a, b))
    return merges


def build_spec(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """tokenizer.json (parsed) -> (the C++ spec dict, the file's truncation or None).

    Raises:
        UnsupportedTokenizerError: a component or option this tokenizer does not reproduce.
    """
    if data.get("version", "1.0") != "1.0":
        raise _unsupported(f"version {data.get('version')!r}")
    if data.get("padding") is not None:
        raise _unsupported("padding (it changes the ids)")
    truncation = data.get("truncation")
    if truncation is not None:
        if truncation.get("strategy", "LongestFirst") not in ("LongestFirst", "OnlyFirst"):
            raise _unsupported(f"truncation strategy {truncation.get('strategy')!r}")
        truncation = {
            "max_length": int(truncation["max_length"]),
            "left": truncation.get("direction", "Right") == "Left",
        }

    model = data.get("model") or {}
    if model.get("type", "BPE" if "merges" in model else None) != "BPE":
        raise _unsupported(f"model {model.get('type')!r} (only BPE)")
    if model.get("dropout") not in (None, 0, 0.0):
        raise _unsupported(f"BPE dropout {model['dropout']!r}")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise _unsupported(f"BPE {key} {model[key]!r}")
    vocab = model["vocab"]
    unk = model.get("unk_token")
    if unk is not None and unk not in vocab:
        raise UnsupportedTokenizerError(f"tokenizer.json: unk_token {unk!r} is not in the vocab")

    normalizer = _normalizer_steps(data.get("normalizer"))
    pre_tokenizer = _pre_tokenizer_steps(data.get("pre_tokenizer"), bool(normalizer))
    prefix, suffix = _post_processor(data.get("post_processor"))

    # Added tokens get their ids as HF's AddedVocabulary::add_tokens assigns them: the model's
    # id when the content is in the vocab, else the next id from the vocab's size on.
    by_content: dict[str, tuple[int, dict]] = {}
    next_id = len(vocab)
    for t in data.get("added_tokens") or []:
        content = t["content"]
        if not content:
            continue
        if t.get("single_word"):
            raise _unsupported(f"added token {content!r} with single_word=true")
        if content in by_content:
            token_id = by_content[content][0]
        elif content in vocab:
            token_id = int(vocab[content])
        else:
            token_id, next_id = next_id, next_id + 1
        by_content[content] = (token_id, t)
    added = []
    patterns: set[tuple[bool, str]] = set()
    for content, (token_id, t) in by_content.items():
        normalized = bool(t.get("normalized", not t.get("special", False)))
        pattern = _apply_normalizer(normalizer, content) if normalized else content
        if not pattern or (normalized, pattern) in patterns:
            raise _unsupported(f"added token {content!r} (empty or duplicate after normalisation)")
        patterns.add((normalized, pattern))
        added.append((pattern, token_id, bool(t.get("lstrip")), bool(t.get("rstrip")), normalized))

    spec = {
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "vocab": vocab,
        "merges": _merges(model.get("merges") or []),
        "unk_id": int(vocab[unk]) if unk is not None else -1,
        "fuse_unk": bool(model.get("fuse_unk", False)),
        "byte_fallback": bool(model.get("byte_fallback", False)),
        "ignore_merges": bool(model.get("ignore_merges", False)),
        "prefix": prefix,
        "suffix": suffix,
    }
    return spec, truncation


# ---------------------------------------------------------------------------


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
        limit, left = self._limits(max_length, truncation_side)
        return self._tok.encode_batch(
            texts,
            add_special_tokens,
            max_length=limit,
            truncate_left=left,
            num_threads=self._threads(num_threads),
        )

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
        limit, left = self._limits(max_length, truncation_side)
        return self._tok.encode_batch(
            texts,
            add_special_tokens,
            max_length=limit,
            truncate_left=left,
            num_threads=self._threads(num_threads),
            as_arrays=True,
        )

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
        limit, left = self._limits(max_length, truncation_side)
        return self._tok.count(
            texts,
            add_special_tokens,
            max_length=limit,
            truncate_left=left,
            num_threads=self._threads(num_threads),
        )

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
        limit, left = self._limits(max_length, truncation_side)
        return self._tok.encode_pooled(
            texts,
            separator,
            max_length=limit,
            truncate_left=left,
            num_threads=self._threads(num_threads),
            count_pooled=count_pooled,
            as_arrays=as_arrays,
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
        limit, left = self._limits(max_length, truncation_side)
        return self._tok.doc_cut(
            texts,
            int(doc_max_length),
            max_length=limit,
            truncate_left=left,
            num_threads=self._threads(num_threads),
        )

    def _threads(self, num_threads: int | None) -> int:
        return int(self.num_threads if num_threads is None else num_threads)


def prefix_search(text: str, limit: int) -> Generator[int, int, int]:
    """The token cut of one text (where the official word cut would empty it), as a
    generator: it yields prefix lengths in code points, is sent each prefix's token count,
    and returns the length to keep (``StopIteration.value``).

    A prefix of ``limit`` code points doubles while its count stays ``<= limit``; then the
    last prefix that fit and the first that did not are bisected. The kept prefix fits, and
    one more code point would not. ``Tokenizer.doc_cut`` probes the same lengths in C++
    (csrc/bpe_tokenizer.cpp), so both give the same prefix from the same counts.
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
