"""No top-level folder or module of the repository stands in for an installed package.

Running from the repository root (``python -m pytest``, ``python -c``, a notebook, a script)
puts the root first on ``sys.path``. A folder there with an ``__init__.py`` (or a ``.py`` file)
is then found before site-packages, so a folder named like an installed distribution's
top-level module hides it: transformers 5.25 imports Hugging Face's ``kernels`` package, and our
``kernels/`` folder stood in for it. Folders without ``__init__.py`` (``kernels/``,
``training/``) are namespace portions, which yield to a regular package found later on the path;
``llm2vec_fast/kernels.py`` and ``llm2vec_fast/training.py`` make them our subpackages.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from llm2vec_fast.testing import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTION = "llm2vec-fast"


def _installed_top_level_names() -> dict[str, list[str]]:
    """Top-level module name -> the installed distributions (other than ours) that provide it."""
    names: dict[str, list[str]] = {}
    for name, dists in importlib.metadata.packages_distributions().items():
        others = [d for d in dists if d.replace("_", "-").lower() != OWN_DISTRIBUTION]
        if others:
            names[name] = others
    return names


def _top_level_entries() -> list[tuple[str, str]]:
    """(import name, kind) of every entry at the repository root that Python could import:
    ``regular`` (a folder with ``__init__.py``, a ``.py`` file, an extension module) or
    ``namespace`` (a folder without ``__init__.py``)."""
    entries = []
    for path in sorted(ROOT.iterdir()):
        if path.is_dir():
            if path.name.isidentifier():
                kind = "regular" if (path / "__init__.py").exists() else "namespace"
                entries.append((path.name, kind))
        elif path.suffix in (".py", ".so", ".pyd"):
            name = path.name.split(".")[0]
            if name.isidentifier():
                entries.append((name, "regular"))
    return entries


def test_no_top_level_regular_package_or_module_is_named_like_an_installed_one():
    installed = _installed_top_level_names()
    clashes = {
        name: installed[name]
        for name, kind in _top_level_entries()
        if kind == "regular" and name in installed and name != "llm2vec_fast"
    }
    assert not clashes, (
        f"top-level folders/modules of the repository named like installed packages: {clashes}. "
        "Run from the repository root they would hide the installed ones: remove the folder's "
        "__init__.py (a namespace portion yields) or rename it."
    )


def _is_ours(name: str, location: str) -> bool:
    """Whether ``location`` is the repository's own top-level folder or module ``name``."""
    path = Path(location).resolve()
    return path == ROOT / name or path.is_relative_to(ROOT / name) or path.parent == ROOT


def test_namespace_folders_yield_to_installed_packages_from_the_repository_root():
    """Every top-level name an installed distribution provides resolves, from the repository
    root, to that distribution and not into the repository."""
    installed = _installed_top_level_names()
    names = [n for n, _ in _top_level_entries() if n in installed and n != "llm2vec_fast"]
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        out = {{}}
        for name in {names!r}:
            spec = importlib.util.find_spec(name)
            where = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
            out[name] = where
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    inside = {
        name: where
        for name, where in resolved.items()
        if any(_is_ours(name, w) for w in where if w)
    }
    assert not inside, f"from the repository root these resolve to the repository's: {inside}"


def test_transformers_and_llm2vec_fast_import_and_encode_from_the_repository_root(tmp_path):
    """transformers' model stack (which imports Hugging Face's ``kernels``) and llm2vec_fast,
    imported in a process whose ``sys.path[0]`` is the repository root, encode a text."""
    ckpt = make_tiny_checkpoint(tmp_path / "tiny", "llama", seed=3)
    code = textwrap.dedent(
        f"""
        import sys
        assert sys.path[0] in ("", {str(ROOT)!r}), sys.path[:2]
        import transformers.activations
        from transformers import AutoModel, LlamaConfig
        import llm2vec_fast
        from llm2vec_fast import LLM2Vec
        import llm2vec_fast.kernels, llm2vec_fast.training
        model = LLM2Vec.from_pretrained({str(ckpt)!r})
        emb = model.encode(["one text from the repository root"], show_progress_bar=False)
        assert tuple(emb.shape) == (1, model.model.config.hidden_size), emb.shape
        print("ok", llm2vec_fast.kernels.__path__[0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("ok"), result.stdout
