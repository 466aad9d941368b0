"""Evaluation: a built-in offline suite, and the ``llm2vec-fast eval`` command.

The offline suite needs no MTEB data and no network; it reads two small labelled sets that
gensim ships in its wheel (``gensim/test/test_data/``):

- ``pang_lee_polarity.cor``: 200 movie-review sentences labelled ``__label__pos`` /
  ``__label__neg``. Sentence embeddings -> stratified k-fold logistic regression (standardised
  features, L2 penalty as scikit-learn's default ``C=1``, L-BFGS in float64); the score is the
  accuracy over all out-of-fold predictions.
- ``wordsim353.tsv``: 353 word pairs with human similarity judgements. Each word is embedded as
  a text on its own; the score is the Spearman correlation between the pairs' cosine
  similarities and the human scores.

Both come with a 95% bootstrap interval (percentile method, resampling sentences or pairs, a
fixed seed), so a before/after comparison can say whether a difference is more than noise.

    from llm2vec_fast.evaluation import evaluate_offline
    scores = evaluate_offline(model)   # {"polarity": {...}, "wordsim353": {...}, ...}

``llm2vec-fast eval --offline`` runs the same; ``llm2vec-fast eval --tasks ...`` runs MTEB tasks
(:mod:`llm2vec_fast.integrations.mteb`, the ``mteb`` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llm2vec_fast.encoder import LLM2Vec

__all__ = [
    "add_eval_parser",
    "bootstrap_interval",
    "evaluate_offline",
    "fit_logistic_regression",
    "gensim_test_data_dir",
    "kfold_logistic_regression",
    "offline_table",
    "predict_logistic_regression",
    "rankdata",
    "read_polarity",
    "read_wordsim",
    "spearman",
    "stratified_folds",
    "word_similarity",
]

POLARITY_FILE = "pang_lee_polarity.cor"
WORDSIM_FILE = "wordsim353.tsv"


# ---------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------- statistics


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (float64 ``[n]``), ties given their average rank."""
    x = np.asarray(x)
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]  # the first of each run of equal values
    dense = np.cumsum(first)[inverse]  # 1-based index of each item's run
    # run r (1-based) spans the sorted positions bounds[r - 1] .. bounds[r] - 1
    bounds = np.r_[np.flatnonzero(first), n]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two ``[n]`` arrays (NaN when either is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else float("nan")


def bootstrap_interval(
    statistic, n: int, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` items: the statistic
    is recomputed on ``n_bootstrap`` resamples (``n`` indices drawn with replacement from a
    ``numpy`` generator seeded with ``seed``); NaN resamples are dropped."""
    if n_bootstrap <= 0:
        raise ValueError(f"n_bootstrap must be positive; got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_bootstrap)])
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def fit_logistic_regression(
    x: np.ndarray, y: np.ndarray, *, c: float = 1.0, max_iter: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features.

    Minimises ``sum_i cross_entropy_i + ||W||^2 / (2 c)`` (scikit-learn's objective with
    ``C=c``; the bias is not penalised) with L-BFGS in float64, from zeros (deterministic),
    on one CPU thread.

    Args:
        x: float ``[n, d]`` features. y: int ``[n]`` labels ``0 .. k-1``.

    Returns:
        ``(weight [d, k], bias [k], mean [d], std [d])`` float64: predict with
        ``argmax(((x - mean) / std) @ weight + bias)`` (:func:`predict_logistic_regression`).
    """
    import torch

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x [n, d] and y [n]; got {x.shape} and {y.shape}")
    k = int(y.max()) + 1
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, reduction="sum")
        loss = loss + (w * w).sum() / (2.0 * c)
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a problem this small runs fastest on one thread
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return w.detach().numpy(), b.detach().numpy(), mean, std


def predict_logistic_regression(model, x: np.ndarray) -> np.ndarray:
    """int64 ``[n]`` labels from :func:`fit_logistic_regression`'s result."""
    w, b, mean, std = model
    return np.argmax(((np.asarray(x, dtype=np.float64) - mean) / std) @ w + b, axis=1)


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """int64 ``[n]`` fold number of each item: each class shuffled (seeded), then dealt round
    robin to the k folds, so every fold has each class in about equal share."""
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"folds must be >= 2; got {k}")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < k:
        raise ValueError(f"folds={k} is more than the smallest class ({counts.min()} items)")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def kfold_logistic_regression(
    x: np.ndarray,
    y: np.ndarray,
    *,
    folds: int = 10,
    seed: int = 0,
    n_bootstrap: int = 1000,
    c: float = 1.0,
) -> dict:
    """Stratified k-fold logistic regression (:func:`fit_logistic_regression`) on features
    ``x [n, d]`` with labels ``y [n]``.

    Returns a dict: ``accuracy`` (over all out-of-fold predictions), ``ci95`` (bootstrap over
    items), ``fold_accuracy`` (one per fold), ``n``, ``folds``.
    """
    fold = stratified_folds(y, folds, seed)
    correct = np.zeros(len(y), dtype=np.float64)
    per_fold = []
    for f in range(folds):
        test = fold == f
        model = fit_logistic_regression(x[~test], y[~test], c=c)
        hits = predict_logistic_regression(model, x[test]) == y[test]
        correct[test] = hits
        per_fold.append(float(hits.mean()))
    return {
        "accuracy": float(correct.mean()),
        "ci95": list(bootstrap_interval(lambda i: correct[i].mean(), len(y), n_bootstrap, seed)),
        "fold_accuracy": per_fold,
        "n": len(y),
        "folds": folds,
    }


def word_similarity(
    emb1: np.ndarray, emb2: np.ndarray, human: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """Spearman correlation between the cosine similarities of paired embeddings
    (``emb1``, ``emb2``: float ``[n, d]``) and human scores ``[n]``, with a bootstrap interval
    over pairs. Returns ``{"spearman", "ci95", "n_pairs"}``."""
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(norms, 1e-12)
    human = np.asarray(human, dtype=np.float64)
    return {
        "spearman": spearman(cos, human),
        "ci95": list(
            bootstrap_interval(lambda i: spearman(cos[i], human[i]), len(human), n_bootstrap, seed)
        ),
        "n_pairs": len(human),
    }


# ---------------------------------------------------------------------------- the suite


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


# ---------------------------------------------------------------------------- command line

EVAL_HELP = """\
Evaluate an encoder.

--offline: the built-in suite, no data download: sentence classification on gensim's
pang_lee_polarity.cor (k-fold logistic regression) and word similarity on wordsim353.tsv,
each with a 95% bootstrap interval. Writes OUTPUT_DIR/offline.json.

--tasks T1,T2: MTEB tasks (needs the mteb extra: pip install "llm2vec-fast[mteb]"). Queries get
the task's instruction from --instructions (the official llm2vec task_to_instructions.json
format, {"TaskName": "instruction:"}; tasks it does not name get MTEB's default instruction),
documents none, as the official mteb_eval.py does. --data-dir DIR holds local copies of the
tasks' Hugging Face dataset repositories at DIR/<repository id> (e.g. DIR/mteb/stsbenchmark-sts);
nothing is downloaded then. Writes MTEB's result files under OUTPUT_DIR/results/ and a summary
table to OUTPUT_DIR/summary.md and summary.json.
"""


def add_eval_parser(sub) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on ``llm2vec-fast``'s subparsers."""
    from llm2vec_fast.cli import add_model_arguments

    e = sub.add_parser(
        "eval",
        help="evaluate an encoder: MTEB tasks, or the built-in offline suite",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--offline", action="store_true", help="the built-in offline suite")
    what.add_argument(
        "--tasks", default=None, help="MTEB task names, comma-separated (e.g. STS12,SciFact)"
    )
    add_model_arguments(e)
    e.add_argument("--max-length", type=int, default=None, help="token limit per sequence")
    e.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="model dtype"
    )
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    e.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    e.add_argument(
        "--instructions",
        default=None,
        metavar="FILE",
        help="MTEB: task_to_instructions.json ({task name: instruction})",
    )
    e.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="MTEB: local dataset copies at DIR/<repository id>; offline: a folder with "
        f"{POLARITY_FILE} and {WORDSIM_FILE} (default: gensim's test data)",
    )
    e.add_argument("--output-dir", default="eval-results", metavar="DIR", help="where results go")
    e.add_argument(
        "--resume",
        action="store_true",
        help="MTEB: keep results already in OUTPUT_DIR for the same model name (default: rerun)",
    )
    e.add_argument("--folds", type=int, default=10, help="offline: k of the k-fold classifier")
    e.add_argument("--bootstrap", type=int, default=1000, help="offline: bootstrap resamples")
    e.add_argument("--seed", type=int, default=0, help="offline: seed of folds and bootstrap")
    e.add_argument("--causal", action="store_true", help="causal attention (the paper's baseline)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval_command)
    return e


def _task_names(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks names no task")
    return names


def run_eval_command(args: argparse.Namespace) -> int:
    """``llm2vec-fast eval``: load the model, run the offline suite or MTEB, write results."""
    from llm2vec_fast.optional import install_command, require

    out_dir = Path(args.output_dir)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a directory")
    mteb_module = None
    data_dir = args.data_dir
    if args.tasks is None and data_dir is None:  # before the model loads
        data_dir = gensim_test_data_dir(other_way="--data-dir DIR")
    if args.tasks is not None:
        tasks = _task_names(args.tasks)
        if args.data_dir is not None:  # local data only: never reach for the hub
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        require("mteb", feature="eval --tasks")
        try:
            from llm2vec_fast.integrations import mteb as mteb_module
        except ImportError as e:  # mteb is there but does not import (a version it cannot use)
            raise ValueError(
                f"--tasks needs the mteb package ({e}); install it with {install_command('mteb')}"
            ) from None
        instructions = (
            mteb_module.load_task_instructions(args.instructions) if args.instructions else None
        )

    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.loading import LoadSpec

    model = LLM2Vec.from_pretrained(**LoadSpec.from_options(args).kwargs(), device=args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mteb_module is None:
        scores = evaluate_offline(
            model,
            data_dir=data_dir,
            folds=args.folds,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            batch_size=args.batch_size,
            show_progress_bar=not args.quiet,
        )
        (out_dir / "offline.json").write_text(json.dumps(scores, indent=2) + "\n", "utf-8")
        print(offline_table(scores))
        print(f"\nwrote {out_dir / 'offline.json'} ({scores['seconds']:.1f} s)")
        return 0

    encoder = mteb_module.LLM2VecMTEB(model, instructions, batch_size=args.batch_size)
    rows = mteb_module.run_mteb(
        encoder,
        tasks,
        output_dir=out_dir,
        data_dir=args.data_dir,
        overwrite=not args.resume,
        show_progress_bar=not args.quiet,
    )
    table = mteb_module.summary_table(rows)
    (out_dir / "summary.md").write_text(table + "\n", "utf-8")
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n", "utf-8")
    print(table)
    print(f"\nresults under {out_dir / 'results'}; summary in {out_dir / 'summary.md'}")
    return 0
