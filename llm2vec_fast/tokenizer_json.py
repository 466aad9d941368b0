"""``tokenizer.json`` -> the spec of the C++ tokenizer, refusing at load time what it does not
reproduce (the supported set is listed in :mod:`llm2vec_fast.tokenizer`).

:func:`build_spec` reads each HF stage in turn (normalizer, pre-tokenizer, BPE model,
post-processor, added tokens, truncation) into the dict that ``llm2vec_fast._C.BPETokenizer``
takes; anything else raises :class:`UnsupportedTokenizerError`, naming it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GPT2_REGEX",
    "LLAMA3_REGEX",
    "QWEN2_REGEX",
    "UnsupportedTokenizerError",
    "build_spec",
]


class UnsupportedTokenizerError(ValueError):
    """The tokenizer.json asks for something this tokenizer does not reproduce."""


# The pre-tokenisation regexes with a hand-written matcher in C++ (RegexKind in csrc/tokenizer_spec.h).
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
