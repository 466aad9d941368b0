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

The package: :mod:`.statistics` (ranks, Spearman, bootstrap intervals, logistic regression,
stratified folds), :mod:`.offline` (the data and the suite), :mod:`.command` (the ``eval``
subcommand).
"""

from llm2vec_fast.evaluation.command import add_eval_parser, run_eval_command
from llm2vec_fast.evaluation.offline import (
    POLARITY_FILE,
    WORDSIM_FILE,
    evaluate_offline,
    gensim_test_data_dir,
    offline_table,
    read_polarity,
    read_wordsim,
)
from llm2vec_fast.evaluation.statistics import (
    bootstrap_interval,
    fit_logistic_regression,
    kfold_logistic_regression,
    predict_logistic_regression,
    rankdata,
    spearman,
    stratified_folds,
    word_similarity,
)

__all__ = [
    "POLARITY_FILE",
    "WORDSIM_FILE",
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
    "run_eval_command",
    "spearman",
    "stratified_folds",
    "word_similarity",
]
