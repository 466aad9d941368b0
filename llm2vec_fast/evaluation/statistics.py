"""The offline evaluation's statistics, in numpy and torch: ranks and Spearman's correlation,
percentile bootstrap intervals, multinomial logistic regression (scikit-learn's objective,
L-BFGS), stratified folds, k-fold classification and word similarity."""

from __future__ import annotations

import math

import numpy as np


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
