"""Optional dependencies: one check and one message for every feature that needs one.

    from llm2vec_fast.optional import require
    require("pyarrow", feature="--format parquet")   # before any work starts

raises :class:`MissingDependencyError` (an ``ImportError``) naming the package and how to
install it: the extra of ``setup.py`` that brings it (``pip install 'llm2vec-fast[parquet]'``),
or the package itself when no extra does (gensim, whose test files ``eval --offline`` reads, is
only in the ``[test]`` extra, so users are told ``pip install gensim``). The command line prints
the message as one line and exits with status 2.

A module that imports an optional package at its top wraps those imports in
:func:`optional_import`, which turns the raw ``ModuleNotFoundError`` into the same message.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator

# import name -> (what pip installs, the llm2vec-fast extra that brings it, or None)
OPTIONAL = {
    "pyarrow": ("pyarrow", "parquet"),
    "ray": ("ray[data]", "ray"),
    "mteb": ("mteb", "mteb"),
    "sentence_transformers": ("sentence-transformers", "st"),
    "gensim": ("gensim", None),
}


class MissingDependencyError(ImportError):
    """An optional package that a feature needs is not installed."""


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (located, not imported; ``sys.modules[name] = None``
    counts as absent, as it does for ``import``)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_command(module: str) -> str:
    """What to run to get ``module``: its extra, else the package itself."""
    package, extra = OPTIONAL.get(module, (module, None))
    return f"pip install 'llm2vec-fast[{extra}]'" if extra else f"pip install {package}"


def missing_dependency(
    module: str, feature: str, hint: str | None = None
) -> MissingDependencyError:
    """The error for ``feature`` lacking ``module`` (``hint``: another way out, appended)."""
    package = OPTIONAL.get(module, (module, None))[0].split("[")[0]
    message = f"{feature} needs {package}, which is not installed: {install_command(module)}"
    if hint:
        message += f"; {hint}"
    return MissingDependencyError(message, name=module)


def require(*modules: str, feature: str, hint: str | None = None) -> None:
    """Raise :class:`MissingDependencyError` for the first of ``modules`` that is missing."""
    for module in modules:
        if not is_available(module):
            raise missing_dependency(module, feature, hint)


@contextlib.contextmanager
def optional_import(module: str, feature: str) -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` for ``module`` (or a submodule) inside the block into
    :class:`MissingDependencyError`; any other import error goes through unchanged."""
    try:
        yield
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == module or e.name.startswith(module + ".")):
            raise missing_dependency(module, feature) from None
        raise
