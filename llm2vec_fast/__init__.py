"""llm2vec-fast: LLM2Vec text encoders over packed, padding-free batches.

``from llm2vec_fast import LLM2Vec`` is a drop-in for ``from llm2vec import LLM2Vec``.
"""

from llm2vec_fast.encoder import LLM2Vec
from llm2vec_fast.loading import CheckpointError
from llm2vec_fast.tokenizer import Tokenizer, UnsupportedTokenizerError
from llm2vec_fast.version import __version__

__all__ = ["CheckpointError", "LLM2Vec", "Tokenizer", "UnsupportedTokenizerError", "__version__"]
