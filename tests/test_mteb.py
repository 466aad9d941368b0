"""MTEB end to end on tasks built here with local data: scores written, instructions for queries
only, the ``llm2vec-fast eval --tasks`` command with ``--data-dir``.

Needs the ``mteb`` extra (``pip install "llm2vec-fast[mteb]"``); skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

mteb = pytest.importorskip(
    "mteb", reason="the mteb extra is not installed (pip install 'llm2vec-fast[mteb]')"
)

from datasets import Dataset  # noqa: E402  (mteb brings datasets)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402

from l2vf_support.sts import STS_ROWS, write_sts_benchmark  # noqa: E402
from llm2vec_fast import LLM2Vec  # noqa: E402
from llm2vec_fast.cli import main  # noqa: E402
from llm2vec_fast.integrations.mteb import (  # noqa: E402
    LLM2VecMTEB,
    load_task_instructions,
    run_mteb,
    summary_table,
)

QUERY_INSTRUCTION = "Given a question about animals, retrieve the passage that answers it:"
QUERIES = {
    "q1": "what do cats eat?",
    "q2": "how fast can a horse run?",
    "q3": "where do penguins live?",
    "q4": "why do dogs bark?",
}
CORPUS = {
    "d1": ("Cats", "Cats are carnivores and eat mostly meat."),
    "d2": ("", "A horse can gallop at about 50 km per hour."),
    "d3": ("Penguins", "Penguins live in the southern hemisphere, many in Antarctica."),
    "d4": ("", "Dogs bark to communicate, warn or ask for attention."),
    "d5": ("Trees", "Oak trees can live for hundreds of years."),
}
RELEVANT = {"q1": "d1", "q2": "d2", "q3": "d3", "q4": "d4"}


class TinyAnimalRetrieval(AbsTaskRetrieval):
    """A retrieval task whose data are built here (no download)."""

    metadata = TaskMetadata(
        type="Retrieval",
        name="TinyAnimalRetrieval",
        main_score="ndcg_at_10",
        description="Four questions about animals against five passages (test data).",
        reference="https://example.org/tiny-animal-retrieval",
        dataset={"path": "local/tiny-animal-retrieval", "revision": "1"},
        category="t2t",
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        date=("2024-01-01", "2024-01-01"),
        dialect=[],
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        modalities=["text"],
        sample_creation="created",
        bibtex_citation="",
    )

    def load_data(self, num_proc=None, **kwargs):
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": k, "text": v} for k, v in QUERIES.items()]),
            corpus=Dataset.from_list(
                [{"id": k, "title": t, "text": x} for k, (t, x) in CORPUS.items()]
            ),
            relevant_docs={q: {d: 1} for q, d in RELEVANT.items()},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = tiny_checkpoint("llama", seed=11)
    return LLM2Vec.from_pretrained(ckpt, device="cpu")


def _record_encode(model, monkeypatch):
    """Record every list of sentences that reaches ``model.encode``."""
    seen: list = []
    real = model.encode

    def encode(sentences, *args, **kwargs):
        seen.append([list(s) for s in sentences])
        return real(sentences, *args, **kwargs)

    monkeypatch.setattr(model, "encode", encode)
    return seen


def _doc_text(title, text):
    return f"{title} {text}".strip()


def test_retrieval_end_to_end_instruction_split(model, tmp_path, monkeypatch):
    seen = _record_encode(model, monkeypatch)
    encoder = LLM2VecMTEB(model, {"TinyAnimalRetrieval": QUERY_INSTRUCTION}, batch_size=3)
    rows = run_mteb(encoder, [TinyAnimalRetrieval()], output_dir=tmp_path)

    # what the encoder received: queries with the task's instruction, documents without
    query_calls = [c for c in seen if c[0][0] == QUERY_INSTRUCTION]
    doc_calls = [c for c in seen if c[0][0] == ""]
    assert len(query_calls) + len(doc_calls) == len(seen) >= 2
    assert sorted(t for c in query_calls for _, t in c) == sorted(QUERIES.values())
    assert all(i == QUERY_INSTRUCTION for c in query_calls for i, _ in c)
    assert sorted(t for c in doc_calls for _, t in c) == sorted(
        _doc_text(*v) for v in CORPUS.values()
    )
    assert all(i == "" for c in doc_calls for i, _ in c)

    # the scores written are the ones our own embeddings give
    monkeypatch.undo()
    q = model.encode([[QUERY_INSTRUCTION, t] for t in QUERIES.values()], show_progress_bar=False)
    d = model.encode([["", _doc_text(*v)] for v in CORPUS.values()], show_progress_bar=False)
    q = q / q.norm(dim=1, keepdim=True)
    d = d / d.norm(dim=1, keepdim=True)
    top = (q @ d.T).argmax(1).tolist()
    doc_ids, query_ids = list(CORPUS), list(QUERIES)
    expected_recall_at_1 = np.mean(
        [doc_ids[top[i]] == RELEVANT[qid] for i, qid in enumerate(query_ids)]
    )

    files = list((tmp_path / "results").rglob("TinyAnimalRetrieval.json"))
    assert len(files) == 1, files
    result = json.loads(files[0].read_text())
    scores = result["scores"]["test"][0]
    assert scores["recall_at_1"] == pytest.approx(expected_recall_at_1, abs=1e-4)
    assert 0.0 <= scores["ndcg_at_10"] <= 1.0
    assert rows == [
        {
            "task": "TinyAnimalRetrieval",
            "type": "Retrieval",
            "split": "test",
            "subset": "default",
            "main_score_name": "ndcg_at_10",
            "main_score": pytest.approx(scores["ndcg_at_10"], abs=1e-4),
        }
    ]
    table = summary_table(rows)
    assert "TinyAnimalRetrieval" in table and f"{100 * rows[0]['main_score']:.2f}" in table


def test_default_instruction_is_mteb_s_task_prompt(model):
    encoder = LLM2VecMTEB(model)
    task = mteb.get_task("STSBenchmark")
    instruction = encoder.instruction_for(task.metadata, None)
    assert instruction.endswith(":") and len(instruction) > 1
    assert encoder.instruction_for(task.metadata, "document") == ""
    own = LLM2VecMTEB(model, {"STSBenchmark": "Retrieve semantically similar text:"})
    assert own.instruction_for(task.metadata, None) == "Retrieve semantically similar text:"


def test_instruction_file_errors(tmp_path, model):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"STS12": "Retrieve semantically similar text:"}))
    assert load_task_instructions(good) == {"STS12": "Retrieve semantically similar text:"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"STS12": 3}))
    with pytest.raises(ValueError, match="instruction strings"):
        load_task_instructions(bad)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_task_instructions(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        load_task_instructions(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="instruction strings"):
        LLM2VecMTEB(model, ["not", "a", "mapping"])


def test_cli_eval_tasks_with_local_data_dir(tmp_path, model, capsys, monkeypatch):
    """A registered MTEB task (STSBenchmark) read from --data-dir; instructions from a file."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the command sets them: undo after
        monkeypatch.setenv(var, "1")
    ckpt = model.load_spec.base_model_name_or_path
    write_sts_benchmark(tmp_path / "data")
    instructions = tmp_path / "task_to_instructions.json"
    instructions.write_text(json.dumps({"STSBenchmark": "Retrieve semantically similar text:"}))
    out = tmp_path / "out"
    argv = ["eval", "--tasks", "STSBenchmark", "--model", ckpt, "--device", "cpu", "-q"]
    argv += ["--instructions", str(instructions), "--data-dir", str(tmp_path / "data")]
    assert main([*argv, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["task"], r["split"], r["main_score_name"]) for r in summary] == [
        ("STSBenchmark", "test", "cosine_spearman")
    ]
    (result_file,) = (out / "results").rglob("STSBenchmark.json")
    written = json.loads(result_file.read_text())["scores"]["test"][0]["main_score"]
    assert summary[0]["main_score"] == pytest.approx(written, abs=1e-4)
    assert "STSBenchmark" in printed and (out / "summary.md").is_file()

    # the same score from our own embeddings: cosine similarity vs gold, Spearman
    from llm2vec_fast.evaluation import spearman

    inst = "Retrieve semantically similar text:"
    a = model.encode([[inst, r[0]] for r in STS_ROWS], show_progress_bar=False)
    b = model.encode([[inst, r[1]] for r in STS_ROWS], show_progress_bar=False)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1).numpy()
    assert written == pytest.approx(spearman(cos, np.array([r[2] for r in STS_ROWS])), abs=1e-4)


def test_cli_eval_missing_local_copy(tmp_path, model, capsys, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    ckpt = model.load_spec.base_model_name_or_path
    (tmp_path / "data").mkdir()
    argv = ["eval", "--tasks", "STSBenchmark", "--model", ckpt, "--device", "cpu", "-q"]
    argv += ["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "no local copy of its dataset 'mteb/stsbenchmark-sts'" in capsys.readouterr().err
