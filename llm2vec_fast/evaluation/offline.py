"""The offline suite: gensim's ``pang_lee_polarity.cor`` (k-fold logistic regression) and
``wordsim353.tsv`` (Spearman correlation of cosine similarities), read from gensim's test data
or a folder, each score with a bootstrap interval (see :mod:`llm2vec_fast.evaluation`)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm2vec_fast.evaluation.statistics import kfold_logistic_regression, word_similarity

if TYPE_CHECKING:
    from llm2vec_fast.encoder import LLM2Vec

POLARITY_FILE = "pang_lee_polarity.cor"
WORDSIM_FILE = "wordsim353.tsv"


def gensim_test_data_dir(*, other_way: str = "data_dir=DIR") -> Path:
    """``gensim/test/test_data`` of the installed gensim, found without importing gensim.

    Without gensim, raises :class:`~llm2vec_fast.optional.MissingDependencyError` saying
    ``pip install gensim`` (no llm2vec-fast extra brings it) or pass ``other_way`` (how the
    caller names a data folder: ``data_dir=DIR`` in Python, ``--data-dir DIR`` on the command
    line)."""
    from llm2vec_fast.optional import require

    require(
        "gensim",
        feature="the offline evaluation's data",
        hint=f"or pass {other_way}, a folder holding {POLARITY_FILE} and {WORDSIM_FILE}",
    )
    try:
        spec = importlib.util.find_spec("gensim")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"gensim is not a package with data files; pass {other_way}, a folder holding "
            f"{POLARITY_FILE} and {WORDSIM_FILE}"
        )
    for location in spec.submodule_search_locations:
        d = Path(location) / "test" / "test_data"
        if (d / POLARITY_FILE).is_file():
            return d
    raise FileNotFoundError(
        f"gensim is installed at {list(spec.submodule_search_locations)} but holds no "
        f"test/test_data/{POLARITY_FILE}; pass {other_way}, a folder holding {POLARITY_FILE} "
        f"and {WORDSIM_FILE}"
    )


def read_polarity(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Sentences and int64 labels ``[n]`` (0 = neg, 1 = pos) of ``pang_lee_polarity.cor``
    (one ``__label__pos|neg <sentence>`` a line; UTF-8, else Windows-1252 as gensim's copy)."""
    names = {"__label__neg": 0, "__label__pos": 1}
    texts, labels = [], []
    raw = Path(path).read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:  # gensim's copy is Windows-1252 (em dashes, accented words)
        content = raw.decode("cp1252")
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(" ")
        if label not in names or not text.strip():
            raise ValueError(f"{path}:{n}: expected '__label__pos|neg <sentence>'")
        texts.append(text.strip())
        labels.append(names[label])
    if not texts:
        raise ValueError(f"{path} holds no labelled sentences")
    return texts, np.asarray(labels, dtype=np.int64)


def read_wordsim(path: str | os.PathLike) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Word pairs and float64 human scores ``[n]`` of ``wordsim353.tsv`` (``#`` lines are
    comments; then ``word1<TAB>word2<TAB>score``)."""
    pairs, scores = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\r\n").split("\t")
            try:
                w1, w2, score = parts
                scores.append(float(score))
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'word1<TAB>word2<TAB>score'") from None
            pairs.append((w1, w2))
    if not pairs:
        raise ValueError(f"{path} holds no word pairs")
    return pairs, np.asarray(scores, dtype=np.float64)


def evaluate_offline(
    model: LLM2Vec,
    *,
    data_dir: str | os.PathLike | None = None,
    folds: int = 10,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    polarity_instruction: str = "",
    show_progress_bar: bool = False,
) -> dict:
    """Score ``model`` on the offline suite (module docstring).

    Args:
        model: an :class:`~llm2vec_fast.LLM2Vec` (or anything with its ``encode``).
        data_dir: folder with ``pang_lee_polarity.cor`` and ``wordsim353.tsv``; default gensim's
            ``test/test_data``.
        folds: k of the k-fold classification. n_bootstrap, seed: the bootstrap intervals (and
            the fold assignment).
        polarity_instruction: an instruction for the polarity sentences (default none).

    Returns:
        ``{"polarity": {"accuracy", "ci95", "fold_accuracy", "n", "folds"},
        "wordsim353": {"spearman", "ci95", "n_pairs"}, "settings": {...}, "seconds": float}``.
    """
    t0 = time.perf_counter()
    d = Path(data_dir) if data_dir is not None else gensim_test_data_dir()
    texts, labels = read_polarity(d / POLARITY_FILE)
    pairs, human = read_wordsim(d / WORDSIM_FILE)

    def embed(items):
        return np.asarray(
            model.encode(
                items,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                convert_to_numpy=True,
            ),
            dtype=np.float64,
        )

    sentences = [[polarity_instruction, t] for t in texts] if polarity_instruction else texts
    x = embed(sentences)
    polarity = kfold_logistic_regression(x, labels, folds=folds, seed=seed, n_bootstrap=n_bootstrap)

    words = sorted({w for pair in pairs for w in pair})
    row = {w: i for i, w in enumerate(words)}
    emb = embed(words)
    first = emb[[row[w1] for w1, _ in pairs]]
    second = emb[[row[w2] for _, w2 in pairs]]
    wordsim = word_similarity(first, second, human, n_bootstrap=n_bootstrap, seed=seed)
    return {
        "polarity": polarity,
        "wordsim353": wordsim,
        "settings": {
            "data_dir": str(d),
            "folds": folds,
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "polarity_instruction": polarity_instruction,
        },
        "seconds": time.perf_counter() - t0,
    }


def offline_table(scores: dict) -> str:
    """A markdown table of :func:`evaluate_offline`'s result."""
    p, w = scores["polarity"], scores["wordsim353"]
    return "\n".join(
        [
            "| task | metric | score | 95% interval | n |",
            "| --- | --- | --- | --- | --- |",
            f"| pang_lee_polarity ({p['folds']}-fold logistic regression) | accuracy | "
            f"{p['accuracy']:.4f} | [{p['ci95'][0]:.4f}, {p['ci95'][1]:.4f}] | {p['n']} |",
            f"| wordsim353 | spearman | {w['spearman']:.4f} | "
            f"[{w['ci95'][0]:.4f}, {w['ci95'][1]:.4f}] | {w['n_pairs']} |",
        ]
    )
