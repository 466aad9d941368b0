"""Where the subpackages kept in top-level folders live (see :mod:`llm2vec_fast.kernels`)."""

from __future__ import annotations

from pathlib import Path


def subpackage_path(module_file: str, folder: str) -> list[str]:
    """``__path__`` for the module ``llm2vec_fast/<folder>.py`` that makes itself the package
    ``llm2vec_fast.<folder>``: the installed wheel's ``llm2vec_fast/<folder>/`` beside it, else
    the source checkout's top-level ``<folder>/`` (an editable install)."""
    here = Path(module_file).resolve().parent
    for candidate in (here / folder, here.parent / folder):
        if candidate.is_dir():
            return [str(candidate)]
    raise ImportError(f"llm2vec_fast.{folder}: no {folder} folder beside {here}")
