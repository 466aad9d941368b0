"""llm2vec-fast: LLM2Vec text encoders over packed, padding-free batches.

``from llm2vec_fast import LLM2Vec`` is a drop-in for ``from llm2vec import LLM2Vec``.

The names below are imported when first used, so importing one module of the package
(``llm2vec_fast.packing``, ``llm2vec_fast.kernels``) does not load the encoder and everything
it imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from llm2vec_fast.version import __version__

if TYPE_CHECKING:
    from llm2vec_fast.encoder import LLM2Vec
    from llm2vec_fast.loading import CheckpointError
    from llm2vec_fast.tokenizer import Tokenizer, UnsupportedTokenizerError

__all__ = ["CheckpointError", "LLM2Vec", "Tokenizer", "UnsupportedTokenizerError", "__version__"]

_WHERE = {
    "LLM2Vec": "llm2vec_fast.encoder",
    "CheckpointError": "llm2vec_fast.loading",
    "Tokenizer": "llm2vec_fast.tokenizer",
    "UnsupportedTokenizerError": "llm2vec_fast.tokenizer",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llm2vec_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
