"""Mistral-7B's real SentencePiece tokenizer, for the tokenizer parity tests and benchmark."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

from llm2vec_fast.testing import cache_dir


@functools.lru_cache(maxsize=1)
def mistral_tokenizer_json() -> str:
    """Mistral-7B's real SentencePiece tokenizer (32,000 pieces, byte fallback) as
    transformers converts it: a ``tokenizer.json`` text.

    The model file is ``mistral_common/data/tokenizer.model.v1`` from the PyPI package
    ``mistral-common`` (only the file is used: ``pip install --no-deps mistral-common``);
    transformers converts it with ``sentencepiece`` and ``protobuf`` installed (``LlamaTokenizer``,
    bos ``<s>``, eos ``</s>``, unk ``<unk>``, ``legacy=False``). Cached in memory and on disk
    (``llm2vec_fast.testing.cache_dir()``).

    Raises:
        ImportError: mistral-common (its file), sentencepiece or protobuf is missing.
    """
    import tokenizers
    import transformers

    spec = importlib.util.find_spec("mistral_common")  # finds the file without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the PyPI package 'mistral-common' is not installed")
    model = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    if not model.is_file():
        raise ImportError(f"mistral-common holds no {model.name} at {model.parent}")
    for module in ("sentencepiece", "google.protobuf"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ImportError(f"converting the Mistral tokenizer needs {module}")
    stat = model.stat()
    key = hashlib.sha256(
        json.dumps(
            [str(model), stat.st_size, stat.st_mtime_ns, transformers.__version__,
             tokenizers.__version__]
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    cache = cache_dir() / f"mistral-tokenizer-{key}.json"
    try:
        return cache.read_text(encoding="utf-8")
    except OSError:
        pass
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        src, out = pathlib.Path(tmp, "src"), pathlib.Path(tmp, "out")
        src.mkdir()
        shutil.copy(model, src / "tokenizer.model")
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "legacy": False}  # fmt: skip
        (src / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
        text = (out / "tokenizer.json").read_text(encoding="utf-8")
    try:  # written whole, then renamed: a concurrent reader never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, cache)
    except OSError:
        pass  # a read-only cache folder: do without
    return text
