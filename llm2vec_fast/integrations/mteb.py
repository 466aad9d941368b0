"""MTEB: an llm2vec-fast encoder for the ``mteb`` package (2.x), and a runner for local data.

Instructions work as in the official llm2vec evaluation (``experiments/mteb_eval.py``, whose
model wrapper is ``experiments/mteb_eval_custom.py``'s ``LLM2VecWrapper``):

- queries, and the texts of tasks without a query/document split (STS, classification,
  clustering, pair classification), get the task's instruction: the task's entry in a
  ``task_to_instructions.json`` mapping (the official file's format: ``{"TaskName":
  "instruction:"}``), else MTEB's own instruction for the task, ending in ``":"``;
- documents (``prompt_type == "document"``: retrieval and reranking corpora) get none.

Each text goes to :meth:`LLM2Vec.encode` as an ``[instruction, text]`` pair, so the
instruction is attended to but not pooled (``skip_instruction``).

    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.integrations.mteb import LLM2VecMTEB, load_task_instructions, run_mteb

    encoder = LLM2VecMTEB(LLM2Vec.from_pretrained("path"), load_task_instructions("t2i.json"))
    rows = run_mteb(encoder, ["STSBenchmark"], output_dir="results", data_dir="mteb-data")

``run_mteb`` reads each task's data from ``data_dir/<dataset repository id>`` when given (a
local copy of the Hugging Face dataset repository: nothing is downloaded), writes MTEB's result
files under ``output_dir/results/<model name>/<revision>/<Task>.json`` and returns one summary row
per task, split and subset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llm2vec_fast.encoder import LLM2Vec
from llm2vec_fast.optional import optional_import

with optional_import("mteb", feature="llm2vec_fast.integrations.mteb"):
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

__all__ = [
    "LLM2VecMTEB",
    "llm2vec_instruction",
    "load_task_instructions",
    "run_mteb",
    "summary_table",
]


def llm2vec_instruction(instruction: str) -> str:
    """The official formatting of a default instruction: trailing dots dropped, ``":"`` added."""
    if len(instruction) > 0 and instruction[-1] != ":":
        instruction = instruction.strip(".") + ":"
    return instruction


def load_task_instructions(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``task_to_instructions.json`` file: a JSON object ``{task name: instruction}``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"instructions file {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON: {e}") from None
    return _check_instructions(data, str(p))


def _check_instructions(data: Any, where: str) -> dict[str, str]:
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(
            f"{where}: expected a JSON object mapping task names to instruction strings"
        )
    return dict(data)


class LLM2VecMTEB(AbsEncoder):
    """An :class:`~llm2vec_fast.LLM2Vec` as an MTEB encoder (``mteb.evaluate(encoder, tasks)``).

    Args:
        model: an ``LLM2Vec``, or a checkpoint path for ``LLM2Vec.from_pretrained`` (MTEB's
            loader convention: ``model_name``).
        task_to_instructions: ``{task name: instruction}`` (or the path of such a JSON file);
            tasks not in it get MTEB's default instruction (module docstring).
        batch_size: texts per forward pass (default: what MTEB passes, else 32).
        name: the model name in MTEB's results (``"org/name"``; default
            ``"llm2vec-fast/<checkpoint folder>"``). revision: its revision (default ``"local"``).
        device: passed to ``LLM2Vec.from_pretrained`` when ``model`` is a path.
        **from_pretrained_kwargs: more ``LLM2Vec.from_pretrained`` arguments for a path.
    """

    def __init__(
        self,
        model: LLM2Vec | str | os.PathLike | None = None,
        task_to_instructions: Mapping[str, str] | str | os.PathLike | None = None,
        *,
        batch_size: int | None = None,
        name: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        **from_pretrained_kwargs: Any,
    ):
        if isinstance(model, LLM2Vec):
            if from_pretrained_kwargs or device is not None:
                raise TypeError("device and from_pretrained arguments apply to a model path only")
            self.model = model
        else:
            self.model = LLM2Vec.from_pretrained(model, device=device, **from_pretrained_kwargs)
        if isinstance(task_to_instructions, (str, os.PathLike)):
            task_to_instructions = load_task_instructions(task_to_instructions)
        elif task_to_instructions is not None:
            task_to_instructions = _check_instructions(task_to_instructions, "task_to_instructions")
        self.task_to_instructions = task_to_instructions or {}
        self.batch_size = batch_size
        self._name = name
        self._revision = revision or "local"

    @property
    def mteb_model_meta(self) -> ModelMeta:
        name = self._name or _default_name(self.model)
        if "/" not in name:
            name = f"llm2vec-fast/{name}"
        return ModelMeta.create_empty(
            {
                "name": name,
                "revision": self._revision,
                "embed_dim": self.model.config.hidden_size,
                "max_tokens": self.model.max_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "use_instructions": True,
                "framework": ["PyTorch"],
            }
        )

    def instruction_for(self, task_metadata, prompt_type: PromptType | str | None) -> str:
        """The instruction for a task's texts: none for documents; the task's entry in
        ``task_to_instructions``; else MTEB's instruction for the task, ending in ``":"``."""
        if prompt_type is not None and PromptType(prompt_type) == PromptType.document:
            return ""
        if task_metadata.name in self.task_to_instructions:
            return self.task_to_instructions[task_metadata.name]
        prompt_type = PromptType(prompt_type) if prompt_type is not None else None
        return llm2vec_instruction(self.get_instruction(task_metadata, prompt_type))

    def encode(
        self,
        inputs,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed MTEB's batches of ``{"text": [...]}``; float32 ``[n, hidden]`` in input order."""
        instruction = self.instruction_for(task_metadata, prompt_type)
        texts = [text for batch in inputs for text in batch["text"]]
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return self.model.encode(
            [[instruction, text] for text in texts],
            batch_size=self.batch_size or kwargs.get("batch_size") or 32,
            show_progress_bar=bool(kwargs.get("show_progress_bar", False)),
            convert_to_numpy=True,
        )


def _default_name(model: LLM2Vec) -> str:
    spec = model.load_spec
    adapters = spec.peft_model_name_or_path if spec is not None else ()
    path = adapters[-1] if adapters else spec and spec.base_model_name_or_path
    if path:
        return Path(path).name
    return Path(model.name_or_path).name if model.name_or_path else "model"


def _localise(task, data_dir: Path):
    """``task`` reading its data from ``data_dir/<dataset path>`` (a copy of its metadata is
    changed, not the registered task's)."""
    dataset = dict(task.metadata.dataset)
    local = data_dir / dataset["path"]
    if not local.is_dir():
        raise FileNotFoundError(
            f"task {task.metadata.name}: no local copy of its dataset {dataset['path']!r} at "
            f"{local} (--data-dir holds copies of the Hugging Face dataset repositories at "
            "DIR/<repository id>)"
        )
    metadata = task.metadata.model_copy(deep=True)
    metadata.dataset = {**dataset, "path": str(local)}
    task.metadata = metadata
    return task


def run_mteb(
    encoder: LLM2VecMTEB | LLM2Vec,
    tasks: Iterable,
    *,
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = True,
    show_progress_bar: bool = False,
) -> list[dict]:
    """Run MTEB tasks and write their result files.

    Args:
        encoder: an :class:`LLM2VecMTEB` (or an ``LLM2Vec``, wrapped with MTEB's default
            instructions).
        tasks: MTEB task names and/or task objects (``mteb.get_task(...)`` or custom
            ``AbsTask`` subclasses that load their own data).
        output_dir: MTEB's result files go to ``output_dir/results/<model>/<revision>/``.
        data_dir: local copies of the tasks' dataset repositories, at
            ``data_dir/<repository id>``; required for every named task when given. Tasks
            that load their own data are left alone.
        overwrite: rerun tasks whose results exist already (False: keep them).

    Returns:
        One row per task, split and subset: ``{"task", "type", "split", "subset",
        "main_score_name", "main_score"}``.
    """
    import mteb

    if isinstance(encoder, LLM2Vec):
        encoder = LLM2VecMTEB(encoder)
    resolved = []
    for task in tasks:
        if isinstance(task, str):
            task = mteb.get_task(task)
            if data_dir is not None:
                task = _localise(task, Path(data_dir))
        resolved.append(task)
    if not resolved:
        raise ValueError("no MTEB task given")
    result = mteb.evaluate(
        encoder,
        resolved,
        cache=mteb.ResultCache(cache_path=str(output_dir)),
        overwrite_strategy="always" if overwrite else "only-missing",
        show_progress_bar=show_progress_bar,
        encode_kwargs={"batch_size": encoder.batch_size or 32},
    )
    by_name = {t.metadata.name: t for t in resolved}
    rows = []
    for task_result in result.task_results:
        meta = by_name[task_result.task_name].metadata
        for split, entries in task_result.scores.items():
            for entry in entries:
                rows.append(
                    {
                        "task": task_result.task_name,
                        "type": meta.type,
                        "split": split,
                        "subset": entry.get("hf_subset", "default"),
                        "main_score_name": meta.main_score,
                        "main_score": float(entry["main_score"]),
                    }
                )
    return rows


def summary_table(rows: list[dict]) -> str:
    """A markdown table of :func:`run_mteb`'s rows (scores x 100, as MTEB's leaderboard)."""
    lines = [
        "| task | type | split | subset | main score | value |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['type']} | {r['split']} | {r['subset']} | "
            f"{r['main_score_name']} | {100 * r['main_score']:.2f} |"
        )
    if rows:
        mean = sum(r["main_score"] for r in rows) / len(rows)
        lines.append(f"| mean ({len(rows)}) | | | | | {100 * mean:.2f} |")
    return "\n".join(lines)
