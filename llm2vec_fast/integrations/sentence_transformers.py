"""sentence-transformers: an llm2vec-fast encoder as the module of a ``SentenceTransformer``.

``SentenceTransformer.encode`` (prompts, ``normalize_embeddings``, ``precision`` int8/binary,
``truncate_dim``, ``output_value="token_embeddings"``), its evaluators and its training losses
then run on our model code and kernels:

    from llm2vec_fast.integrations.sentence_transformers import llm2vec_sentence_transformer

    st = llm2vec_sentence_transformer(
        "path/to/checkpoint",
        prompts={"query": "Given a web search query, retrieve relevant passages:"},
    )
    q = st.encode(["what is rope?"], prompt_name="query", normalize_embeddings=True)
    # int8 ranges come from the texts encoded together: several (one alone is refused)
    d = st.encode(["RoPE rotates query and key vectors.", "Paris is in France."], precision="int8")

A sentence-transformers prompt becomes the LLM2Vec instruction: ``encode(texts, prompt=P)``
embeds ``[P, text]`` pairs exactly as ``LLM2Vec.encode([[P, text], ...])`` does (joined
``P.strip() + " " + text``, the instruction attended to but not pooled), instead of
sentence-transformers' default of pasting the prompt in front of the text and pooling over it.
Texts may also be given as ``[instruction, text]`` pairs directly.

The module's ``preprocess`` returns the official ``LLM2Vec.tokenize`` batch (left-padded
``input_ids``, ``attention_mask``, ``embed_mask``: batch-first tensors, so sentence-transformers'
samplers, collators and cached losses can slice them); its ``forward`` unpads and runs the batch
packed. It writes ``sentence_embedding`` (float32 ``[B, hidden]``, with gradients when training),
and ``token_embeddings`` (float32 ``[B, max_pooled, hidden]``: each text's pooled tokens,
right-padded) with ``attention_mask`` replaced by the matching ``[B, max_pooled]`` mask, so
``encode(output_value="token_embeddings")`` returns what ``LLM2Vec.encode`` does (a text with no
pooled token gives one zero row there, as sentence-transformers keeps at least one).

Saving writes the LLM2Vec checkpoint (``LLM2Vec.save``) at the model's root; load it back with
:func:`load_sentence_transformer` (sentence-transformers itself asks for
``trust_remote_code=True`` to import a module class from outside its own package).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from llm2vec_fast.devices import resolve_dtype
from llm2vec_fast.encoder import LLM2Vec
from llm2vec_fast.loading import is_peft
from llm2vec_fast.optional import optional_import
from llm2vec_fast.packing import PackedBatch
from llm2vec_fast.text import as_pairs

with optional_import(
    "sentence_transformers", feature="llm2vec_fast.integrations.sentence_transformers"
):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.base.modules.input_module import InputModule

__all__ = ["LLM2VecModule", "llm2vec_sentence_transformer", "load_sentence_transformer"]

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class LLM2VecModule(InputModule):
    """An :class:`~llm2vec_fast.LLM2Vec` as a sentence-transformers input module.

    Args:
        model: an ``LLM2Vec``, or a checkpoint path (None: the embedded default model) loaded
            with ``LLM2Vec.from_pretrained(model, **from_pretrained_kwargs)``.
    """

    config_file_name = "llm2vec_fast_module.json"
    save_in_root = True

    def __init__(self, model: LLM2Vec | str | os.PathLike | None = None, **from_pretrained_kwargs):
        super().__init__()
        if isinstance(model, LLM2Vec):
            if from_pretrained_kwargs:
                raise TypeError("from_pretrained arguments apply to a model path only")
            self.llm2vec = model
        else:
            self.llm2vec = LLM2Vec.from_pretrained(model, **from_pretrained_kwargs)
        self.tokenizer = self.llm2vec.tokenizer

    # ------------------------------------------------------------------ settings

    @property
    def max_seq_length(self) -> int:
        """The encoder's ``max_length`` (instruction + text tokens)."""
        return self.llm2vec.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"max_seq_length must be a positive integer; got {value!r}")
        self.llm2vec.max_length = value

    def get_embedding_dimension(self) -> int:
        return self.llm2vec.config.hidden_size

    def get_config_dict(self) -> dict[str, Any]:
        dtype = next(self.llm2vec.model.parameters()).dtype
        attn = getattr(self.llm2vec.runner.base_model, "attn_implementation", "sdpa")
        if self.llm2vec.runner.auto_kernels:
            attn = "auto"  # chosen again where the model is loaded
        return {"torch_dtype": _DTYPE_NAMES.get(dtype, "float32"), "attn_implementation": attn}

    # ------------------------------------------------------------------ data

    def preprocess(
        self, inputs, prompt: str | None = None, **kwargs
    ) -> dict[str, torch.Tensor | Any]:
        """Texts (or ``[instruction, text]`` pairs) -> the official ``LLM2Vec.tokenize`` batch:
        int64 ``[B, L]`` left-padded ``input_ids``, ``attention_mask`` and ``embed_mask``.
        ``prompt`` is the instruction of every text (plain strings only)."""
        if prompt:
            bad = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
            if bad:
                raise ValueError(
                    f"input {bad[0]} is an [instruction, text] pair and a prompt was given too; "
                    "give the instruction one way"
                )
            pairs = [(prompt, text) for text in inputs]
        else:
            pairs = as_pairs(list(inputs))
        return self.llm2vec.tokenize(self.llm2vec.text.joined(pairs))

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        """Run a :meth:`preprocess` batch packed; add ``sentence_embedding`` and
        ``token_embeddings`` (module docstring)."""
        enc = self.llm2vec
        batch = PackedBatch.from_padded(features, enc.runner.device, enc.skip_instruction)
        hidden = enc.runner.run_model(batch)
        emb = enc.runner.pool(hidden, batch)
        cu = batch.cu_seqlens.tolist()
        pooled = [hidden[a:b][batch.pool_mask[a:b]].float() for a, b in zip(cu[:-1], cu[1:])]
        tokens = torch.nn.utils.rnn.pad_sequence(pooled, batch_first=True)
        lengths = torch.tensor([len(p) for p in pooled], device=tokens.device)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        features["sentence_embedding"] = emb.float()
        features["token_embeddings"] = tokens
        features["attention_mask"] = mask.long()
        return features

    # ------------------------------------------------------------------ saving and loading

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """Write the LLM2Vec checkpoint (``LLM2Vec.save``, merged) and this module's settings.

        A model holding an unmerged PEFT adapter is saved merged, from a merged copy (the
        in-memory model keeps its adapter; the copy needs memory for a second model)."""
        enc = self.llm2vec
        if is_peft(enc.model):
            merged = copy.deepcopy(enc.model).merge_and_unload()
            enc = LLM2Vec(
                merged,
                enc.tokenizer,
                pooling_mode=enc.pooling_mode,
                max_length=enc.max_length,
                doc_max_length=enc.doc_max_length,
                skip_instruction=enc.skip_instruction,
                name_or_path=enc.name_or_path,
            )
        # read back by load() (this library), so a latent-attention head is saved with it
        enc.save(output_path, official_format=False)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs,
    ) -> LLM2VecModule:
        """Load a module that :meth:`save` wrote (a local directory)."""
        path = Path(model_name_or_path) / subfolder
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a directory (llm2vec-fast loads local checkpoints only)"
            )
        config = {}
        if (path / cls.config_file_name).is_file():
            config = json.loads((path / cls.config_file_name).read_text(encoding="utf-8"))
        return cls(
            str(path),
            torch_dtype=resolve_dtype(config.get("torch_dtype")),
            attn_implementation=config.get("attn_implementation", "auto"),
            device="cpu",  # SentenceTransformer moves the whole model to its device
        )


def llm2vec_sentence_transformer(
    model: LLM2Vec | str | os.PathLike | None = None,
    *,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    normalize: bool = False,
    truncate_dim: int | None = None,
    similarity_fn_name: str = "cosine",
    device: str | None = None,
    **from_pretrained_kwargs,
) -> SentenceTransformer:
    """A ``SentenceTransformer`` whose module is our encoder.

    Args:
        model: an ``LLM2Vec`` or a checkpoint path (``from_pretrained_kwargs`` apply to a path).
        prompts: ``{name: instruction}`` (sentence-transformers' ``prompts``; each becomes the
            LLM2Vec instruction of the texts it is used for). default_prompt_name: as in
            sentence-transformers.
        normalize: append a ``Normalize`` module (unit-length embeddings always).
        truncate_dim: Matryoshka truncation of every embedding.
        device: where the pipeline runs (default: where the model is).
    """
    module = LLM2VecModule(model, **from_pretrained_kwargs)
    modules: list[torch.nn.Module] = [module]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(
        modules=modules,
        device=device or str(module.llm2vec.runner.device),
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        truncate_dim=truncate_dim,
        similarity_fn_name=similarity_fn_name,
    )


def load_sentence_transformer(
    path: str | os.PathLike, *, device: str | None = None, **kwargs
) -> SentenceTransformer:
    """Load a ``SentenceTransformer`` saved from :func:`llm2vec_sentence_transformer`'s model.

    sentence-transformers imports a module class from outside its own package only with
    ``trust_remote_code=True``; this passes it after checking that ``modules.json`` names no
    class but this module's and sentence-transformers' own.
    """
    p = Path(path)
    modules_json = p / "modules.json"
    if not modules_json.is_file():
        raise FileNotFoundError(f"{p} holds no modules.json (not a saved SentenceTransformer)")
    ours = f"{LLM2VecModule.__module__}.{LLM2VecModule.__name__}"
    for entry in json.loads(modules_json.read_text(encoding="utf-8")):
        kind = entry.get("type", "")
        if kind != ours and not kind.startswith("sentence_transformers."):
            raise ValueError(
                f"{modules_json} names module class {kind!r}, which is neither llm2vec-fast's "
                "nor sentence-transformers' own; load it with SentenceTransformer(..., "
                "trust_remote_code=True) if you trust it"
            )
    return SentenceTransformer(
        str(p), device=device, trust_remote_code=True, local_files_only=True, **kwargs
    )
