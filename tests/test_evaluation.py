"""The offline evaluation (gensim's polarity sentences and wordsim353) and ``llm2vec-fast eval
--offline``: the statistics against independent computations, the data wiring with fake
encoders whose right answers are known, a real tiny model end to end."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from llm2vec_fast import LLM2Vec
from llm2vec_fast.cli import main
from llm2vec_fast.evaluation import (
    bootstrap_interval,
    evaluate_offline,
    fit_logistic_regression,
    gensim_test_data_dir,
    kfold_logistic_regression,
    predict_logistic_regression,
    rankdata,
    read_polarity,
    read_wordsim,
    spearman,
    stratified_folds,
    word_similarity,
)

DATA = gensim_test_data_dir()


# ---------------------------------------------------------------------------- statistics


def test_rankdata_and_spearman_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for x in (rng.integers(0, 6, 97).astype(float), rng.normal(size=53)):
        assert np.array_equal(rankdata(x), stats.rankdata(x))
        y = x + rng.normal(size=len(x))
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))


def test_logistic_regression_is_at_its_optimum():
    """The returned weights zero the gradient of sklearn's objective (so they are the optimum
    of that convex problem), on an odd-shaped, not separable, three-class problem."""
    import torch

    rng = np.random.default_rng(1)
    x = rng.normal(size=(131, 7)) * rng.uniform(0.1, 10, size=7) + 3.0
    y = (x[:, 0] / x[:, 0].std() + rng.normal(size=131)).argsort().argsort() * 3 // 131
    w, b, mean, std = fit_logistic_regression(x, y, c=0.5)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    z = torch.from_numpy((x - mean) / std)
    loss = torch.nn.functional.cross_entropy(z @ wt + bt, torch.from_numpy(y), reduction="sum")
    (loss + (wt * wt).sum() / (2 * 0.5)).backward()
    assert wt.grad.abs().max() < 1e-5 and bt.grad.abs().max() < 1e-5
    acc = (predict_logistic_regression((w, b, mean, std), x) == y).mean()
    assert 0.5 < acc < 1.0


def test_logistic_regression_agrees_with_sklearn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(180, 33))
    y = (x[:, :3].sum(1) + rng.normal(size=180) > 0).astype(np.int64)
    ours = fit_logistic_regression(x, y)
    z = (x - ours[2]) / ours[3]
    theirs = linear_model.LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(z, y)
    probe = rng.normal(size=(500, 33))
    agree = predict_logistic_regression(ours, probe) == theirs.predict((probe - ours[2]) / ours[3])
    assert agree.mean() >= 0.99


def test_stratified_folds():
    labels = np.array([0] * 23 + [1] * 17 + [2] * 10)
    fold = stratified_folds(labels, 5, seed=3)
    assert np.array_equal(fold, stratified_folds(labels, 5, seed=3))
    for f in range(5):
        counts = np.bincount(labels[fold == f], minlength=3)
        assert np.all(np.abs(counts - np.bincount(labels) / 5) < 1)
    with pytest.raises(ValueError, match="smallest class"):
        stratified_folds(labels, 11)
    with pytest.raises(ValueError, match=">= 2"):
        stratified_folds(labels, 1)


def test_bootstrap_interval():
    values = np.random.default_rng(4).normal(loc=2.0, size=400)
    lo, hi = bootstrap_interval(lambda i: values[i].mean(), len(values), 500, seed=0)
    assert lo < values.mean() < hi
    # the normal-theory interval of a mean: +-1.96 standard errors
    se = values.std() / np.sqrt(len(values))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert (lo, hi) == bootstrap_interval(lambda i: values[i].mean(), len(values), 500, seed=0)
    with pytest.raises(ValueError, match="positive"):
        bootstrap_interval(lambda i: 0.0, 3, 0)


def test_word_similarity_perfect_and_inverted():
    human = np.array([1.0, 5.0, 3.0, 9.0, 7.0])
    angle = (10 - human) / 10 * np.pi / 2  # larger human score, smaller angle
    e1 = np.tile([1.0, 0.0], (5, 1))
    e2 = np.stack([np.cos(angle), np.sin(angle)], 1) * np.arange(1, 6)[:, None]  # norms vary
    assert word_similarity(e1, e2, human, n_bootstrap=50)["spearman"] == pytest.approx(1.0)
    assert word_similarity(e1, e2, -human, n_bootstrap=50)["spearman"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------------- data and wiring


def test_read_gensim_files(tmp_path):
    texts, labels = read_polarity(DATA / "pang_lee_polarity.cor")
    assert len(texts) == 200 and np.bincount(labels).tolist() == [100, 100]
    assert texts[0] == "simplistic , silly and tedious ." and labels[0] == 0
    assert any("—" in t for t in texts)  # Windows-1252 em dash decoded
    pairs, human = read_wordsim(DATA / "wordsim353.tsv")
    assert len(pairs) == 353 and pairs[0] == ("love", "sex") and human[0] == 6.77
    bad = tmp_path / "bad.cor"
    bad.write_text("__label__neutral something\n")
    with pytest.raises(ValueError, match="bad.cor:1"):
        read_polarity(bad)
    bad.write_text("a\tb\n")
    with pytest.raises(ValueError, match="bad.cor:1"):
        read_wordsim(bad)


def _vector(text: str, dim: int = 16) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(text.encode())).normal(size=dim)


class FakeEncoder:
    """Embeds a text as a fixed random vector; a labelled sentence also carries its label."""

    def __init__(self, label_of=None):
        self.label_of = label_of or {}
        self.calls = []

    def encode(self, items, **kwargs):
        self.calls.append(items)
        out = []
        for item in items:
            text = item[1] if isinstance(item, list) else item
            v = _vector(text)
            if text in self.label_of:
                v[0] = 4.0 * (2 * self.label_of[text] - 1)
            out.append(v)
        return np.asarray(out, dtype=np.float32)


def test_offline_wiring_with_fake_encoders():
    texts, labels = read_polarity(DATA / "pang_lee_polarity.cor")
    informed = FakeEncoder(dict(zip(texts, labels.tolist())))
    scores = evaluate_offline(informed, n_bootstrap=200, polarity_instruction="Classify:")
    assert scores["polarity"]["accuracy"] == 1.0 and scores["polarity"]["n"] == 200
    assert all(i == "Classify:" for i, _ in informed.calls[0])  # the instruction is passed

    # wordsim: the Spearman of exactly these words' vectors, computed here
    pairs, human = read_wordsim(DATA / "wordsim353.tsv")
    cos = [
        _vector(a) @ _vector(b) / np.linalg.norm(_vector(a)) / np.linalg.norm(_vector(b))
        for a, b in pairs
    ]
    expected = spearman(np.array(cos), human)
    assert scores["wordsim353"]["spearman"] == pytest.approx(expected, abs=1e-5)
    assert scores["wordsim353"]["n_pairs"] == 353
    lo, hi = scores["wordsim353"]["ci95"]
    assert lo < scores["wordsim353"]["spearman"] < hi

    blind = evaluate_offline(FakeEncoder(), n_bootstrap=200)  # random vectors: near chance
    assert 0.3 < blind["polarity"]["accuracy"] < 0.7
    res = kfold_logistic_regression(
        np.stack([_vector(t) for t in texts]), labels, folds=4, n_bootstrap=100
    )
    assert len(res["fold_accuracy"]) == 4 and res["ci95"][0] <= res["accuracy"] <= res["ci95"][1]


# ---------------------------------------------------------------------------- real model, CLI


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint("llama", seed=9)


def test_cli_eval_offline(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--offline", "--model", str(ckpt), "--device", "cpu", "-q"]
    argv += ["--folds", "5", "--bootstrap", "200", "--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    written = json.loads((out / "offline.json").read_text())
    assert written["settings"]["folds"] == 5 and len(written["polarity"]["fold_accuracy"]) == 5
    assert "pang_lee_polarity" in printed and "wordsim353" in printed
    assert f"{written['wordsim353']['spearman']:.4f}" in printed
    # the same numbers from the Python API
    model = LLM2Vec.from_pretrained(ckpt, device="cpu")
    again = evaluate_offline(model, folds=5, n_bootstrap=200)
    for key in ("accuracy", "ci95", "fold_accuracy"):  # approx takes no nested mappings
        assert again["polarity"][key] == pytest.approx(written["polarity"][key])
    assert again["wordsim353"]["spearman"] == pytest.approx(
        written["wordsim353"]["spearman"], abs=1e-6
    )


def test_cli_eval_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["eval"])  # neither --offline nor --tasks
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["eval", "--offline", "--tasks", "STS12"])
    capsys.readouterr()
    assert main(["eval", "--offline", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["eval", "--tasks", " , "]) == 2
    assert "names no task" in capsys.readouterr().err
    import sys

    import llm2vec_fast.integrations as integrations

    # as if the mteb extra were absent (the module may be imported already)
    monkeypatch.setitem(sys.modules, "llm2vec_fast.integrations.mteb", None)
    monkeypatch.delattr(integrations, "mteb", raising=False)
    assert main(["eval", "--tasks", "STS12"]) == 2
    assert "pip install 'llm2vec-fast[mteb]'" in capsys.readouterr().err


def test_cli_eval_offline_without_gensim(ckpt, tmp_path, capsys, monkeypatch):
    """No gensim and no --data-dir: refused before the model loads, naming ``pip install
    gensim`` and the command line's --data-dir (not the Python API's ``data_dir=``)."""
    import sys

    import llm2vec_fast

    monkeypatch.setitem(sys.modules, "gensim", None)  # as if not installed
    monkeypatch.setattr(
        llm2vec_fast.LLM2Vec, "from_pretrained", lambda *a, **k: pytest.fail("model loaded")
    )
    argv = ["eval", "--offline", "--model", str(ckpt), "-q", "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install gensim" in err and "--data-dir DIR" in err, err
    assert "data_dir=" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    # the Python API names its own argument
    from llm2vec_fast.optional import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"pip install gensim; or pass data_dir=DIR"):
        gensim_test_data_dir()


def test_cli_eval_tasks_without_mteb(tmp_path, capsys, monkeypatch):
    import sys

    import llm2vec_fast

    monkeypatch.setitem(sys.modules, "mteb", None)
    monkeypatch.setattr(
        llm2vec_fast.LLM2Vec, "from_pretrained", lambda *a, **k: pytest.fail("model loaded")
    )
    assert main(["eval", "--tasks", "STS12", "-q"]) == 2
    err = capsys.readouterr().err
    assert "eval --tasks needs mteb" in err and "pip install 'llm2vec-fast[mteb]'" in err, err
