"""``LLM2Vec``: the official library's API over llm2vec-fast's packed encoder.

Same ``from_pretrained`` / ``encode`` / ``tokenize`` / ``forward`` / ``save`` as the official
``llm2vec.LLM2Vec`` (0.2.3), same embeddings to float32 rounding. Where the official code has
a bug we do the sensible thing instead, and say so (README, "Differences from llm2vec"):

- ``encode("a string")`` embeds the string (one vector of shape ``[hidden]``); the official
  library iterates over its characters.
- In a list mixing plain strings and ``[instruction, text]`` pairs, a plain string is a text
  without instruction (the official library decides the form from ``sentences[0]`` only).
- A text whose pooled span is empty (an empty text with ``skip_instruction``) pools its whole
  sequence in ``mean`` mode (the official library averages its padded row, which depends on the
  rest of the batch); ``weighted_mean`` gives a zero vector, as the official library does.
- ``bos_token`` pools the first BOS token of each sequence and raises a clear error when there is
  none (the official library's output shape breaks in both cases).
- Qwen2 is bidirectional. The official Qwen2 encoder is causal in practice (on transformers 4.44
  its SDPA path ignores the bidirectional flag); ``enable_bidirectional=False`` reproduces it.
- A sequence with no tokens at all (an empty text and a tokenizer that adds no special tokens)
  embeds to a zero vector.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llm2vec_fast.chunks import (
    check_batch_args,
    collect_embeddings,
    empty_pooled_texts,
    warn_empty_pooled,
)
from llm2vec_fast.devices import check_device, check_devices, default_device, is_device_list
from llm2vec_fast.loading import (
    ENCODER_ARGS,
    LLM2VEC_CONFIG,
    LoadSpec,
    is_peft,
    load,
)
from llm2vec_fast.multi_device import (
    check_rebuild,
    close_pools,
    device_pools,
    encode_on_devices,
    load_fingerprint,
)
from llm2vec_fast.packing import PackedBatch
from llm2vec_fast.pipeline import encode_chunks
from llm2vec_fast.runner import EncoderRunner
from llm2vec_fast.text import SEP, PairStream, TextProcessor, iter_pairs

__all__ = ["ENCODER_ARGS", "LLM2VEC_CONFIG", "LLM2VEC_POOLING_MODES", "SEP", "LLM2Vec"]

# the official library's modes, and latent_attention (a trained head: latent_attention.py)
LLM2VEC_POOLING_MODES = (
    "mean", "weighted_mean", "eos_token", "last_token", "bos_token", "latent_attention"
)  # fmt: skip


def _shared(name: str, *parts: str, doc: str) -> property:
    """An attribute kept on the encoder's parts (``text``, ``runner``): read from the first,
    written to all."""

    def get(self):
        part = self.__dict__.get(parts[0])
        if part is None:  # not built yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(part, name)

    def set_(self, value):
        for part in parts:
            setattr(self.__dict__[part], name, value)

    return property(get, set_, doc=doc)


class LLM2Vec(nn.Module):
    """A text encoder built from a decoder-only LLM the LLM2Vec way.

    A facade over ``text`` (:class:`~llm2vec_fast.text.TextProcessor`) and ``runner``
    (:class:`~llm2vec_fast.runner.EncoderRunner`), loaded from ``load_spec`` (a
    :class:`~llm2vec_fast.loading.LoadSpec`; None when built directly).

    Args:
        model: an :class:`~llm2vec_fast.model.EncoderModel` (or a ``PeftModel`` around one).
        tokenizer: a transformers tokenizer (fast).
        pooling_mode: ``mean``, ``weighted_mean``, ``eos_token``, ``last_token``, ``bos_token``
            or ``latent_attention`` (NV-Embed's trained head: the model must carry one).
        max_length: token limit of a sequence (instruction + text); longer ones are cut on the right.
        doc_max_length: a text over this many tokens is first cut to fewer words (official rule);
            where that would leave nothing of a non-blank text (no spaces: a Japanese line,
            base64), to a prefix within this many tokens instead (a deviation, README).
        skip_instruction: pool the text's tokens only; the instruction is attended to, not pooled.
        name_or_path: the checkpoint's ``_name_or_path`` (selects the official prompt wrapping).
    """

    tokenizer = _shared("tokenizer", "text", "runner", doc="The HF tokenizer (fast).")
    pooling_mode = _shared("pooling_mode", "text", "runner", doc="How a text's tokens pool.")
    max_length = _shared("max_length", "text", doc="Token limit of a sequence.")
    doc_max_length = _shared("doc_max_length", "text", doc="Token limit of a text (cut).")
    skip_instruction = _shared("skip_instruction", "text", doc="Pool the text's tokens only.")
    name_or_path = _shared("name_or_path", "text", doc="The checkpoint's ``_name_or_path``.")
    family = _shared("family", "text", doc="The model family (config ``model_type``).")

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        pooling_mode: str = "mean",
        max_length: int = 512,
        doc_max_length: int = 400,
        skip_instruction: bool = True,
        name_or_path: str | None = None,
    ):
        super().__init__()
        if pooling_mode not in LLM2VEC_POOLING_MODES:
            raise ValueError(
                f"unknown pooling_mode {pooling_mode!r}; expected one of {LLM2VEC_POOLING_MODES}"
            )
        for name, value in (("max_length", max_length), ("doc_max_length", doc_max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if name_or_path is None:
            name_or_path = getattr(model.config, "_name_or_path", "") or ""
        self.text = TextProcessor(
            tokenizer,
            max_length=max_length,
            doc_max_length=doc_max_length,
            skip_instruction=bool(skip_instruction),
            pooling_mode=pooling_mode,
            name_or_path=name_or_path,
            family=model.config.model_type,
        )
        self.runner = EncoderRunner(model, pooling_mode, tokenizer)
        self.model = model
        self.config = model.config
        self.load_spec: LoadSpec | None = None  # what worker processes load (several devices)
        self.last_encode_stats: dict | None = None
        self._fingerprint: tuple | None = None

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "model" and "runner" in self.__dict__:  # a PEFT wrapper put on, or merged
            self.runner.model = value

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        base_model_name_or_path: str | os.PathLike | None = None,
        peft_model_name_or_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        merge_peft: bool = False,
        enable_bidirectional: bool = True,
        *,
        base_weights_path: str | os.PathLike | None = None,
        torch_dtype=None,
        device: str | torch.device | None = None,
        attn_implementation: str = "auto",
        **kwargs,
    ) -> LLM2Vec:
        """Load an encoder from local paths (nothing is downloaded).

        Args:
            base_model_name_or_path: an HF checkpoint directory (config.json + safetensors,
                sharded or not), a directory in the published LLM2Vec layout (config.json plus
                an MNTP adapter, merged on load), or a ``.gguf`` file. None: the embedded
                default model, SmolLM2-135M-Instruct.
            peft_model_name_or_path: a PEFT LoRA adapter directory applied on top (merged when
                ``merge_peft``), or a list of them (all but the last are merged).
            merge_peft: merge the last adapter into the weights (faster inference).
            enable_bidirectional: False gives the causal model (the paper's baseline).
            base_weights_path: the local base checkpoint for an adapter directory whose
                ``base_model_name_or_path`` is a hub id.
            torch_dtype: float32 (default), bfloat16 or float16; a dtype or its name.
            device: where the model lives; default CUDA when available, else CPU.
            attn_implementation: ``auto`` (default): our Triton kernels on a CUDA device in
                float16/bfloat16, once they pass a check against torch on that device (else
                ``sdpa``, with a warning), ``sdpa`` otherwise; ``sdpa`` (torch SDPA per
                text), ``eager`` (the plain reference) or ``triton`` (our kernels, unchecked).
            pooling_mode, max_length, doc_max_length, skip_instruction: override
                ``llm2vec_config.json``.
        """
        spec = LoadSpec.create(
            base_model_name_or_path,
            peft_model_name_or_path,
            merge_peft=merge_peft,
            enable_bidirectional=enable_bidirectional,
            base_weights_path=base_weights_path,
            torch_dtype=torch_dtype,
            attn_implementation=attn_implementation,
            **kwargs,
        )
        return cls.from_spec(spec, device=device)

    @classmethod
    def from_spec(cls, spec: LoadSpec, device: str | torch.device | None = None) -> LLM2Vec:
        """Load the encoder ``spec`` names (:meth:`from_pretrained` builds one from its
        arguments; :meth:`LoadSpec.from_options <llm2vec_fast.loading.LoadSpec.from_options>`
        from command-line options) onto ``device`` (default CUDA when available, else CPU)."""
        loaded = load(spec)
        enc = cls(
            loaded.model, loaded.tokenizer, name_or_path=loaded.name_or_path, **loaded.settings
        )
        enc = enc.to(check_device(device or default_device()))
        enc.load_spec = loaded.spec
        enc._fingerprint = load_fingerprint(enc.model)
        if spec.attn_implementation == "auto":
            enc.runner.auto_kernels = True
            enc.select_kernels()
        return enc

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half() ...: an "auto" model chooses its kernels again for where it
        # now is (a sentence-transformers model loads on the CPU, then moves)
        out = super()._apply(fn, *args, **kwargs)
        runner = self.__dict__.get("runner")
        if runner is not None and runner.auto_kernels:
            runner.select_kernels()
        return out

    def select_kernels(self, *, check_on_cpu: bool = False, recheck: bool = False) -> str:
        """Choose the kernels as ``attn_implementation="auto"`` does; returns the choice
        (:meth:`EncoderRunner.select_kernels <llm2vec_fast.runner.EncoderRunner.select_kernels>`)."""
        return self.runner.select_kernels(check_on_cpu=check_on_cpu, recheck=recheck)

    def check_kernels(self, lengths: Sequence[int] = (1, 7, 97, 130, 33)) -> str | None:
        """Our kernels against torch's path on the model's device; None when they agree
        (:meth:`EncoderRunner.check_kernels <llm2vec_fast.runner.EncoderRunner.check_kernels>`)."""
        return self.runner.check_kernels(lengths)

    # ------------------------------------------------------------------ official batch API

    def prepare_for_tokenization(self, text: str) -> str:
        """The official prompt wrapping (keyed on ``_name_or_path``) and eos_token suffix."""
        return self.text.prepare_for_tokenization(text)

    def _convert_to_str(self, instruction: str, text: str) -> str:
        """``instruction.strip() + " " + SEP + text`` (``SEP + text`` without instruction),
        after the doc_max_length cut."""
        return self.text.convert_to_str(instruction, text)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Official ``tokenize``: joined strings (with SEP) -> a left-padded batch dict with
        ``input_ids``, ``attention_mask`` and ``embed_mask`` (1 on the pooled text tokens)."""
        return self.text.padded(texts)

    def forward(self, sentence_feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """Official ``forward``: a padded batch from :meth:`tokenize` -> pooled ``[B, hidden]``,
        run packed (the padding is dropped, never computed)."""
        batch = PackedBatch.from_padded(sentence_feature, self.runner.device, self.skip_instruction)
        return self.runner.embed(batch)

    # ------------------------------------------------------------------ encode

    def encode(
        self,
        sentences,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        convert_to_numpy: bool = False,
        convert_to_tensor: bool = False,
        device: str | torch.device | Sequence[str | torch.device] | None = None,
        *,
        normalize_embeddings: bool = False,
        max_tokens_per_batch: int | None = None,
        output_value: str = "sentence_embedding",
        chunk_size: int = 16384,
    ):
        """Embed texts. Returns float32 embeddings in input order.

        Args:
            sentences: a string; a list of strings; a list of ``[instruction, text]`` pairs (a
                plain string in the list is a text without instruction); one MEDI item
                ``[instruction, text, int]``; or an iterator/generator of strings or pairs,
                read lazily (the embeddings are collected; :meth:`encode_iter` hands them out
                chunk by chunk instead).
            batch_size: at most this many texts per forward pass.
            max_tokens_per_batch: at most this many tokens per forward pass (packed, no
                padding); default ``batch_size * max_length`` on a GPU, at most
                :data:`llm2vec_fast.chunks.CPU_TOKEN_BUDGET` (1024) on a CPU, never under
                ``max_length``. A text is never split.
            normalize_embeddings: L2-normalise each embedding.
            convert_to_numpy: return a numpy array; else a torch tensor (on the CPU).
            device: run on this device (default: where the model is, in this process), or on a
                list of devices (``["cuda:0", "cuda:1"]``; an entry may repeat, ``["cpu",
                "cpu"]``): one worker process per device loads the model from the paths it was
                loaded from and takes batches as it frees up; results come back in input order
                (:mod:`llm2vec_fast.multi_device`). Only a list starts processes. The workers
                stay up for later calls; :meth:`close_device_pool` ends them.
            output_value: ``"sentence_embedding"`` (pooled) or ``"token_embeddings"``: each
                text's last hidden states over its pooled tokens (the instruction's tokens
                excluded when ``skip_instruction``), the representation the paper's word-level
                tasks probe.
            chunk_size: texts tokenized, sorted by length and packed together (the pipeline's
                unit, :mod:`llm2vec_fast.pipeline`): while the model runs one batch the next is
                copied to the device and the next chunk is tokenized on other threads.

        The counts and timings of the call (tokens, batches, ``input_wait_fraction``: the share
        of wall time the model waited for input) are left in ``last_encode_stats``. A non-blank
        text of which no token is pooled (it tokenizes to nothing, or nothing of it fits in
        ``doc_max_length`` tokens) is embedded all the same, with a ``UserWarning`` naming it.

        Returns:
            ``[n, hidden]`` float32, or ``[hidden]`` for a single string; for token
            embeddings a list of ``[n_tokens_i, hidden]`` float32 (one array for a string).
        """
        if output_value not in ("sentence_embedding", "token_embeddings"):
            raise ValueError(
                f"unknown output_value {output_value!r}; "
                "expected 'sentence_embedding' or 'token_embeddings'"
            )
        tokens_out = output_value == "token_embeddings"
        if tokens_out and normalize_embeddings:
            raise ValueError("normalize_embeddings applies to sentence embeddings only")
        single = isinstance(sentences, str)
        pairs = iter_pairs(sentences)
        max_tokens_per_batch = check_batch_args(batch_size, max_tokens_per_batch)
        if convert_to_tensor:
            convert_to_numpy = False
        n = None if isinstance(pairs, PairStream) else len(pairs)
        results = self._run(
            device, pairs, batch_size, max_tokens_per_batch, chunk_size, show_progress_bar, n,
            token_level=tokens_out,
        )  # fmt: skip
        out = collect_embeddings(results, n, self.config.hidden_size, tokens_out, convert_to_numpy)
        if tokens_out:
            return out[0] if single else out
        if normalize_embeddings:
            out = F.normalize(out, p=2, dim=1)
        if single:
            out = out[0]
        return out.numpy() if convert_to_numpy else out

    def encode_iter(
        self,
        sentences,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_tensor: bool = False,
        *,
        normalize_embeddings: bool = False,
        max_tokens_per_batch: int | None = None,
        chunk_size: int = 16384,
        device: str | torch.device | Sequence[str | torch.device] | None = None,
    ):
        """Embed a stream of texts chunk by chunk, in bounded memory.

        ``sentences`` is anything :meth:`encode` takes, or any iterable (a generator over a
        file far larger than memory); it is read lazily, a few chunks ahead of the model.
        Yields float32 ``[m, hidden]`` numpy arrays (tensors with ``convert_to_tensor``), one
        per chunk of at most ``chunk_size`` texts (the first ones smaller), in input order: the
        rows of all chunks together are the embeddings of the input, in order. An invalid item
        raises ``TypeError`` naming its position once the chunks before it are handed out.
        ``device``: as in :meth:`encode` (a list runs one worker process per device).
        """
        # checked now, not at the first next(): a wrong argument fails at the call
        max_tokens_per_batch = check_batch_args(batch_size, max_tokens_per_batch)
        pairs = iter_pairs(sentences)
        n = len(pairs) if isinstance(pairs, list) else None
        results = self._run(
            device, pairs, batch_size, max_tokens_per_batch, chunk_size, show_progress_bar, n
        )

        def blocks():
            for res in results:
                warn_empty_pooled(empty_pooled_texts(res.chunk))
                out = torch.from_numpy(res.embeddings)
                if normalize_embeddings:
                    out = F.normalize(out, p=2, dim=1)
                yield out if convert_to_tensor else out.numpy()

        return blocks()

    def _run(self, device, pairs, batch_size, max_tokens, chunk_size, progress, total, **kw):
        """Each chunk's :class:`~llm2vec_fast.pipeline.ChunkResult`, in input order: from the
        pipeline here, or from worker processes when ``device`` is a list of several (see
        ``device`` in :meth:`encode`); moves the model when one device is named."""
        args = dict(batch_size=batch_size, max_tokens_per_batch=max_tokens, chunk_size=chunk_size)
        args.update(show_progress_bar=progress, total=total, **kw)
        devices = check_devices(device) if is_device_list(device) else None
        if devices is not None and len(devices) == 1:
            device, devices = devices[0], None
        if devices is None:
            if device is not None:
                self.to(check_device(device))
            self.eval()
            stats = functools.partial(setattr, self, "last_encode_stats")
            return encode_chunks(self.text, self.runner, pairs, on_close=stats, **args)
        check_rebuild(self.load_spec, self._fingerprint, self.model, devices)
        if "_device_pools" not in self.__dict__:
            self.__dict__["_device_pools"] = device_pools(self)
        return encode_on_devices(
            self._device_pools, self.load_spec, devices, self.text, pairs,
            pooling_mode=self.pooling_mode, hidden_size=self.config.hidden_size, **args,
        )  # fmt: skip

    def close_device_pool(self) -> None:
        """End the worker processes that ``encode`` on several devices started (and free the
        memory they hold). A later multi-device ``encode`` starts new ones."""
        close_pools(self.__dict__.get("_device_pools", {}))

    # ------------------------------------------------------------------ saving

    def save(
        self, output_path: str | os.PathLike, merge_before_save: bool = False,
        save_config: bool = True, *, official_format: bool = True,
    ):  # fmt: skip
        """Write a checkpoint directory that this library and the official one both load.

        A model holding an unmerged adapter writes the adapter only (as the official library
        does) unless ``merge_before_save``; otherwise config.json (``_name_or_path`` kept),
        model.safetensors, the tokenizer and llm2vec_config.json. An encoder with a
        latent-attention head refuses (the official library cannot read one) unless
        ``official_format=False``: the head then goes to ``latent_attention.safetensors``."""
        from llm2vec_fast.compat import save_encoder

        if is_peft(self.model) and merge_before_save:
            self.model = self.model.merge_and_unload()
        settings = {k: getattr(self, k) for k in ENCODER_ARGS} if save_config else None
        save_encoder(self.model, self.tokenizer, output_path, self.name_or_path, settings,
                     official_format=official_format)  # fmt: skip
