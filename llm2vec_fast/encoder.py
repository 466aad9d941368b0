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
import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm2vec_fast.kernels import segment_pool, segment_pool_ref
from llm2vec_fast.loading import (
    CheckpointError,
    apply_adapter,
    build_encoder,
    gguf_to_safetensors,
    is_adapter_dir,
    load_encoder,
    load_hf_config,
    read_json,
    read_state_dict,
)
from llm2vec_fast.multi_device import (
    check_devices,
    close_pools,
    default_devices,
    load_fingerprint,
    run_on_devices,
)
from llm2vec_fast.packing import PackedBatch
from llm2vec_fast.pipeline import (
    ChunkResult,
    EncodePipeline,
    chunked,
    default_token_budget,
    in_background,
    pack_chunks,
)
from llm2vec_fast.tokenizer import for_hf_tokenizer, token_cut

SEP = "!@#$%^&*()"
LLM2VEC_POOLING_MODES = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token")
ENCODER_ARGS = ("pooling_mode", "max_length", "doc_max_length", "skip_instruction")
LLM2VEC_CONFIG = "llm2vec_config.json"

# The official prompt wrapping, keyed on config ``_name_or_path``.
_LLAMA3_INSTRUCT = "meta-llama/Meta-Llama-3-8B-Instruct"
_INST_MODELS = ("mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-2-7b-chat-hf")
_GEMMA_IT = ("google/gemma-2-9b-it",)
_QWEN_INSTRUCT = ("Qwen/Qwen2-1.5B-Instruct", "Qwen/Qwen2-7B-Instruct")
# The literal text appended in eos_token mode, by model family.
_EOS_TEXT = {"llama": " </s>", "mistral": " </s>", "gemma": "<eos>", "qwen2": "<|endoftext|>"}

# Relative L2 error allowed between our kernels and torch's path on the same random input in
# check_kernels: a few times what two correct implementations differ by through a whole model
# in that dtype; a wrong kernel is off by O(1).
_KERNEL_CHECK_TOL = {torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype) -> torch.dtype:
    """A torch dtype from a dtype, its name (``"bfloat16"``, ``"bf16"`` ...) or None (float32)."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in _DTYPES:
        return _DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return dev


class LLM2Vec(nn.Module):
    """A text encoder built from a decoder-only LLM the LLM2Vec way.

    Args:
        model: an :class:`~llm2vec_fast.model.EncoderModel` (or a ``PeftModel`` around one).
        tokenizer: a transformers tokenizer (fast).
        pooling_mode: ``mean``, ``weighted_mean``, ``eos_token``, ``last_token`` or ``bos_token``.
        max_length: token limit of a sequence (instruction + text); longer ones are cut on the right.
        doc_max_length: a text over this many tokens is first cut to fewer words (official rule);
            where that would leave nothing of a non-blank text (no spaces: a Japanese line,
            base64), to a prefix within this many tokens instead (a deviation, README).
        skip_instruction: pool the text's tokens only; the instruction is attended to, not pooled.
        name_or_path: the checkpoint's ``_name_or_path`` (selects the official prompt wrapping).
    """

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
        self.model = model
        self.tokenizer = tokenizer
        self.pooling_mode = pooling_mode
        self.max_length = max_length
        self.doc_max_length = doc_max_length
        self.skip_instruction = bool(skip_instruction)
        self.config = model.config
        if name_or_path is None:
            name_or_path = getattr(model.config, "_name_or_path", "") or ""
        self.name_or_path = name_or_path
        self.family = model.config.model_type

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
        encoder_args = {k: kwargs.pop(k) for k in ENCODER_ARGS if kwargs.get(k) is not None}
        for k in ENCODER_ARGS:
            kwargs.pop(k, None)
        if kwargs.pop("trust_remote_code", False):
            raise ValueError(
                "llm2vec-fast runs its own model code; trust_remote_code is not supported"
            )
        if "dtype" in kwargs:  # transformers 5's name for torch_dtype
            torch_dtype = kwargs.pop("dtype")
        kwargs.pop("low_cpu_mem_usage", None)
        if kwargs:
            raise TypeError(f"from_pretrained() got unexpected arguments: {sorted(kwargs)}")
        dtype = resolve_dtype(torch_dtype)

        if base_model_name_or_path is None:
            from llm2vec_fast.default_model import default_model_path

            base_dir = default_model_path()
        else:
            base_dir = Path(base_model_name_or_path)
            if not base_dir.exists():
                raise CheckpointError(
                    f"model path {base_dir} does not exist (llm2vec-fast loads local paths only; "
                    "there is no model hub here)"
                )
            if base_dir.is_file():
                if base_dir.suffix.lower() != ".gguf":
                    raise CheckpointError(
                        f"{base_dir} is a file; expected a checkpoint directory or a .gguf file"
                    )
                base_dir = gguf_to_safetensors(base_dir)

        auto = attn_implementation == "auto"
        model, name_or_path = _load_base(
            base_dir,
            base_weights_path,
            dtype=dtype,
            attn_implementation="sdpa" if auto else attn_implementation,
            causal=not enable_bidirectional,
        )

        adapters: list = []
        if peft_model_name_or_path is not None:
            if isinstance(peft_model_name_or_path, (str, os.PathLike)):
                adapters = [peft_model_name_or_path]
            else:
                adapters = list(peft_model_name_or_path)
        for i, adapter in enumerate(adapters):
            last = i == len(adapters) - 1
            model = apply_adapter(model, adapter, merge=merge_peft or not last)

        config_dir = Path(adapters[-1]) if adapters else base_dir
        config: dict = {}
        if (config_dir / LLM2VEC_CONFIG).is_file():
            config.update(read_json(config_dir / LLM2VEC_CONFIG))
        unknown = set(config) - set(ENCODER_ARGS)
        for k in unknown:
            config.pop(k)
        config.update(encoder_args)

        tokenizer = _load_tokenizer(base_dir, base_weights_path)
        enc = cls(model=model, tokenizer=tokenizer, name_or_path=name_or_path, **config)
        enc = enc.to(_check_device(device or _default_device()))
        # what a worker process needs to load the same model (encode on several devices)
        enc._load_args = {
            "base_model_name_or_path": _abspath(base_model_name_or_path),
            "peft_model_name_or_path": [_abspath(a) for a in adapters] or None,
            "merge_peft": merge_peft,
            "enable_bidirectional": enable_bidirectional,
            "base_weights_path": _abspath(base_weights_path),
            "torch_dtype": dtype,
            "attn_implementation": attn_implementation,
            **config,
        }
        enc._load_fingerprint = load_fingerprint(enc)
        enc._auto_kernels = auto
        if auto:
            enc.select_kernels()
        return enc

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half() ...: an "auto" model chooses its kernels again for where it
        # now is (a sentence-transformers model loads on the CPU, then moves)
        out = super()._apply(fn, *args, **kwargs)
        if self.__dict__.get("_auto_kernels"):
            self.select_kernels()
        return out

    def select_kernels(self, *, check_on_cpu: bool = False, recheck: bool = False) -> str:
        """Choose the model's kernels as ``attn_implementation="auto"`` does; returns the choice.

        On a CUDA device in float16/bfloat16: ``triton`` when our kernels agree with torch's
        path on this device (:meth:`check_kernels`), else ``sdpa`` with a warning naming the
        problem. Anywhere else ``sdpa`` (float32 keeps torch's path, the reference precision).
        ``LLM2VEC_FAST_KERNELS=torch`` forces ``sdpa``. ``check_on_cpu``: run the check on a
        CPU model too (tests, under ``TRITON_INTERPRET=1``). The choice is kept per device and
        dtype (moving the model chooses again); ``recheck`` runs the check again anyway."""
        base = self._base_model()
        dev, dtype = self._device(), next(base.parameters()).dtype
        wanted = os.environ.get("LLM2VEC_FAST_KERNELS", "auto").strip().lower()
        key = (dev, dtype, wanted, check_on_cpu)
        chosen = self.__dict__.get("_kernel_choice")
        if chosen is not None and chosen[0] == key and not recheck:  # checked here already
            base.attn_implementation = chosen[1]
            return chosen[1]
        choice = self._choose_kernels(dev, dtype, wanted, check_on_cpu)
        base.attn_implementation = choice
        self.__dict__["_kernel_choice"] = (key, choice)
        return choice

    def _choose_kernels(self, dev, dtype, wanted: str, check_on_cpu: bool) -> str:
        on_gpu = dev.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        if wanted in ("torch", "sdpa", "0") or not (on_gpu or check_on_cpu):
            return "sdpa"
        problem = self.check_kernels()
        if problem is not None:
            import warnings

            warnings.warn(
                f"llm2vec-fast: the Triton kernels failed their check on {dev} ({problem}); "
                "running torch's path (attn_implementation='sdpa')",
                RuntimeWarning,
                stacklevel=2,
            )
            return "sdpa"
        return "triton"

    def check_kernels(self, lengths: Sequence[int] = (1, 7, 97, 130, 33)) -> str | None:
        """Run the model with our Triton kernels and with torch SDPA on random tokens in texts
        of ``lengths`` (packed together) on its device; None when every text's hidden states
        and mean pooling agree within the dtype's tolerance, else what went wrong. The model is
        left on ``sdpa``."""
        base = self._base_model()
        dev, dtype = self._device(), next(base.parameters()).dtype
        tol = _KERNEL_CHECK_TOL.get(dtype, 1e-3)
        gen = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, base.config.vocab_size, (sum(lengths),), generator=gen).to(dev)
        cu_list = np.cumsum([0, *lengths]).tolist()
        cu = torch.tensor(cu_list, dtype=torch.int32, device=dev)
        pos = torch.cat([torch.arange(n, dtype=torch.int32) for n in lengths]).to(dev)
        keep = torch.ones(len(ids), dtype=torch.bool, device=dev)
        try:
            with torch.inference_mode():
                base.attn_implementation = "sdpa"
                ref = self._run_model(ids, cu, pos, max(lengths)).float()
                base.attn_implementation = "triton"
                got = self._run_model(ids, cu, pos, max(lengths)).float()
                pooled = segment_pool(got, cu, keep, "mean").float()
                pooled_ref = segment_pool_ref(got, cu, keep, "mean").float()
        except Exception as exc:  # noqa: BLE001 - reported, and torch's path is kept
            return f"{type(exc).__name__}: {exc}"
        finally:
            base.attn_implementation = "sdpa"
        if not torch.isfinite(got).all():
            return "non-finite hidden states"
        for n, a, b in zip(lengths, cu_list[:-1], cu_list[1:]):
            err = float((got[a:b] - ref[a:b]).norm() / ref[a:b].norm().clamp_min(1e-12))
            if err > tol:
                return (
                    f"hidden states of a {n}-token text differ from torch's by {err:.3g} (rel. L2)"
                )
        err = float((pooled - pooled_ref).norm() / pooled_ref.norm().clamp_min(1e-12))
        if err > tol:
            return f"mean pooling differs from torch's by {err:.3g} (rel. L2)"
        return None

    def _base_model(self):
        return self.model.get_base_model() if _is_peft(self.model) else self.model

    # ------------------------------------------------------------------ text preparation

    def prepare_for_tokenization(self, text: str) -> str:
        """The official prompt wrapping (keyed on ``_name_or_path``) and eos_token suffix."""
        name = self.name_or_path
        if name == _LLAMA3_INSTRUCT:
            return "<|start_header_id|>user<|end_header_id|>\n\n" + text.strip() + "<|eot_id|>"
        if name in _INST_MODELS:
            text = "[INST] " + text.strip() + " [/INST]"
        if name in _GEMMA_IT:
            text = "<bos><start_of_turn>user\n" + text.strip() + "<end_of_turn>"
        if name in _QWEN_INSTRUCT:
            text = "<|im_start|>user\n" + text.strip() + "<|im_end|>"
        if self.pooling_mode == "eos_token":
            if name == "meta-llama/Meta-Llama-3-8B":
                text = text.strip() + "<|end_of_text|>"
            elif self.family in _EOS_TEXT:
                text = text.strip() + _EOS_TEXT[self.family]
        return text

    def _token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text alone (no special tokens), capped at max_length."""
        if not texts:
            return []
        fast = for_hf_tokenizer(self.tokenizer)  # the C++ tokenizer, same ids, when it can
        if fast is not None:
            return fast.count_tokens(
                texts,
                add_special_tokens=False,
                max_length=self.max_length,
                truncation_side=getattr(self.tokenizer, "truncation_side", "right"),
            ).tolist()
        enc = self.tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=self.max_length
        )
        return [len(ids) for ids in enc["input_ids"]]

    def _convert_to_str(self, instruction: str, text: str) -> str:
        """``instruction.strip() + " " + SEP + text`` (``SEP + text`` without instruction),
        after the doc_max_length cut."""
        return _join(instruction, self._cut_texts([text])[0])

    def _joined_strings(self, pairs: list[tuple[str, str]]) -> list[str]:
        """:meth:`_convert_to_str` then :meth:`prepare_for_tokenization` for many pairs: the
        doc_max_length cut on C++ threads when the C++ tokenizer stands in, else in rounds
        of batched counts (the same strings as the official loop, text by text)."""
        texts = self._cut_texts([t for _, t in pairs])
        prepare = self.prepare_for_tokenization
        return [prepare(_join(instruction, text)) for (instruction, _), text in zip(pairs, texts)]

    def _cut_texts(self, texts: list[str]) -> list[str]:
        """Each text after the official doc_max_length cut; where that empties a non-blank
        text (no spaces: one long "word"), cut by tokens instead, a deviation from llm2vec
        0.2.3 (:meth:`llm2vec_fast.tokenizer.Tokenizer.doc_cut`), the same with either
        tokenizer."""
        fast = for_hf_tokenizer(self.tokenizer)
        if fast is not None:
            _, cut = fast.doc_cut(
                texts,
                self.doc_max_length,
                max_length=self.max_length,
                truncation_side=getattr(self.tokenizer, "truncation_side", "right"),
            )
            return [t if c is None else c for t, c in zip(texts, cut)]
        counts = self._token_counts(texts)
        over = [i for i, n in enumerate(counts) if n > self.doc_max_length]
        # In rounds over all the texts still too long; each text is split once (the words of
        # " ".join(words[:k]) are words[:k]).
        words = {i: texts[i].split() for i in over}
        source = {i: texts[i] for i in over if words[i]}  # the non-blank ones, uncut
        while over:
            for i in over:
                words[i] = words[i][: int(len(words[i]) * (self.doc_max_length / counts[i]))]
                texts[i] = " ".join(words[i])
            for i, n in zip(over, self._token_counts([texts[i] for i in over])):
                counts[i] = n
            over = [i for i in over if counts[i] > self.doc_max_length]
        emptied = [i for i in source if not words[i]]
        cuts = token_cut([source[i] for i in emptied], self.doc_max_length, self._token_counts)
        for i, cut in zip(emptied, cuts):
            texts[i] = cut
        return texts

    @staticmethod
    def _split_sep(joined: str) -> tuple[str, str]:
        """The string the model sees (separators removed) and the part that is pooled."""
        parts = joined.split(SEP)
        return "".join(parts), parts[1] if len(parts) > 1 else ""

    def _token_ids(self, joined: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each joined string (lists) and the length of its pooled span."""
        ids, offsets, counts = self._token_arrays(joined)
        if offsets is None:
            return ids, counts.tolist()
        bounds = offsets.tolist()
        flat = ids.tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])], counts.tolist()

    def _token_arrays(self, joined: list[str]):
        """Token ids of each joined string and the length of its pooled span, in the form the
        packer reads fastest: ``(ids int32 [total], offsets int64 [n + 1], counts int64 [n])``
        from the C++ tokenizer (no Python list per text), or ``(id lists, None, counts)``
        from HF ``tokenizers``."""
        fast = for_hf_tokenizer(self.tokenizer)
        if fast is not None:  # the same split and both tokenizations, on C++ threads
            return fast.encode_pooled(
                joined,
                SEP,
                max_length=self.max_length,
                truncation_side=getattr(self.tokenizer, "truncation_side", "right"),
                count_pooled=self.skip_instruction,
                as_arrays=True,
            )
        full, pooled = zip(*(self._split_sep(s) for s in joined))
        ids = self.tokenizer(list(full), truncation=True, max_length=self.max_length)["input_ids"]
        if not self.skip_instruction:
            return ids, None, np.array([len(x) for x in ids], dtype=np.int64)
        return ids, None, np.asarray(self._token_counts(list(pooled)), dtype=np.int64)

    # ------------------------------------------------------------------ official batch API

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Official ``tokenize``: joined strings (with SEP) -> a left-padded batch dict with
        ``input_ids``, ``attention_mask`` and ``embed_mask`` (1 on the pooled text tokens)."""
        full, pooled = zip(*(self._split_sep(t) for t in texts))
        features = self.tokenizer(
            list(full),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        )
        counts = self._token_counts(list(pooled))
        embed_mask = torch.zeros_like(features["attention_mask"])
        for i, n in enumerate(counts):
            if n > 0:
                embed_mask[i, -n:] = 1
        features["embed_mask"] = embed_mask
        return features

    def forward(self, sentence_feature: dict[str, torch.Tensor]) -> torch.Tensor:
        """Official ``forward``: a padded batch from :meth:`tokenize` -> pooled ``[B, hidden]``.

        The batch is unpadded and run packed; padding is never computed.
        """
        t = self._unpad(sentence_feature)
        hidden = self._run_model(
            t["input_ids"], t["cu_seqlens"], t["position_ids"], t["max_seqlen"]
        )
        return self._pool(hidden, t["cu_seqlens"], t["pool_mask"], t["input_ids"])

    def _unpad(self, features: dict[str, torch.Tensor]) -> dict:
        """A padded batch from :meth:`tokenize` as a packed one on the model's device:
        ``input_ids`` int64 ``[total]``, ``cu_seqlens`` int32 ``[B + 1]``, ``position_ids``
        int64 ``[total]``, ``pool_mask`` bool ``[total]`` (the pooled tokens: ``embed_mask``
        when ``skip_instruction``, else every token) and ``max_seqlen``."""
        input_ids = features["input_ids"]
        attention = features["attention_mask"].bool()
        if self.skip_instruction and "embed_mask" in features:
            pool = features["embed_mask"].bool() & attention
        else:
            pool = attention
        lengths = attention.sum(1)
        device = self._device()
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        return {
            "input_ids": input_ids[attention].to(device),
            "cu_seqlens": cu.to(device),
            "position_ids": torch.cat([torch.arange(int(n)) for n in lengths]).to(device),
            "pool_mask": pool[attention].to(device),
            "max_seqlen": int(lengths.max()),
        }

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
                :data:`llm2vec_fast.pipeline.CPU_TOKEN_BUDGET` (1024) on a CPU, never under
                ``max_length``. A text is never split.
            normalize_embeddings: L2-normalise each embedding.
            convert_to_numpy: return a numpy array; else a torch tensor (on the CPU).
            device: run on this device (default: where the model is), or on a list of
                devices (``["cuda:0", "cuda:1"]``; an entry may repeat, ``["cpu", "cpu"]``):
                one worker process per device loads the model from the paths it was loaded
                from and takes batches as it frees up; results come back in input order. With
                no device and the model on a GPU, every visible GPU is used when there are
                several (:mod:`llm2vec_fast.multi_device`). The workers stay up for later calls;
                :meth:`close_device_pool` ends them.
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
        pairs = _iter_pairs(sentences)
        max_tokens_per_batch = self._check_batch_args(batch_size, max_tokens_per_batch)
        if convert_to_tensor:
            convert_to_numpy = False
        run = self._runner(device)
        stream = isinstance(pairs, _PairStream)
        n = None if stream else len(pairs)
        results = run(
            pairs, batch_size, max_tokens_per_batch, chunk_size, show_progress_bar, n,
            token_level=tokens_out,
        )  # fmt: skip
        empty: list[int] = []  # non-blank texts with an empty pooled span (warned about)
        if tokens_out:
            per_text: list = []
            for res in results:
                empty += _empty_pooled_texts(res.chunk)
                per_text.extend(
                    e if convert_to_numpy else torch.from_numpy(e) for e in res.embeddings
                )
            _warn_empty_pooled(empty)
            if not per_text:
                raise ValueError("encode() got an empty iterator of sentences")
            return per_text[0] if single else per_text
        if stream:
            parts = []
            for res in results:
                empty += _empty_pooled_texts(res.chunk)
                parts.append(torch.from_numpy(res.embeddings))
            if not parts:
                raise ValueError("encode() got an empty iterator of sentences")
            out = torch.cat(parts)
        else:
            out = torch.empty(n, self.model.config.hidden_size, dtype=torch.float32)
            for res in results:
                empty += _empty_pooled_texts(res.chunk)
                rows = slice(res.chunk.offset, res.chunk.offset + len(res.chunk.pairs))
                out[rows] = torch.from_numpy(res.embeddings)
        _warn_empty_pooled(empty)
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
        max_tokens_per_batch = self._check_batch_args(batch_size, max_tokens_per_batch)
        pairs = _iter_pairs(sentences)
        run = self._runner(device)
        n = len(pairs) if isinstance(pairs, list) else None
        results = run(pairs, batch_size, max_tokens_per_batch, chunk_size, show_progress_bar, n)

        def blocks():
            for res in results:
                _warn_empty_pooled(_empty_pooled_texts(res.chunk))
                out = torch.from_numpy(res.embeddings)
                if normalize_embeddings:
                    out = F.normalize(out, p=2, dim=1)
                yield out if convert_to_tensor else out.numpy()

        return blocks()

    def _runner(self, device):
        """:meth:`_pipeline` here, or :meth:`_on_devices` for several devices (see ``device``
        in :meth:`encode`); moves the model when one device is named."""
        devices = None
        if isinstance(device, (list, tuple)):
            devices = check_devices(device)
            if len(devices) == 1:
                device, devices = devices[0], None
        elif device is None:
            devices = default_devices(self)
        if device is not None and devices is None:
            self.to(_check_device(device))
        self.eval()
        return self._pipeline if devices is None else functools.partial(self._on_devices, devices)

    def _check_batch_args(self, batch_size, max_tokens_per_batch) -> int | None:
        """Both checked; ``None`` (the device's default budget, chosen when the device is
        known: :func:`llm2vec_fast.pipeline.default_token_budget`) stays ``None``."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if max_tokens_per_batch is None:
            return None
        if not isinstance(max_tokens_per_batch, int) or max_tokens_per_batch <= 0:
            raise ValueError(
                f"max_tokens_per_batch must be a positive integer; got {max_tokens_per_batch!r}"
            )
        return max_tokens_per_batch

    def _pipeline(
        self,
        pairs,
        batch_size,
        max_tokens_per_batch,
        chunk_size,
        show_progress_bar,
        total,
        token_level=False,
    ):
        """Run the overlapped pipeline (:mod:`llm2vec_fast.pipeline`) over ``pairs``; yield
        each chunk's :class:`~llm2vec_fast.pipeline.ChunkResult` in input order. Its counts and
        times are left in :attr:`last_encode_stats`."""
        from tqdm.auto import tqdm

        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
        bar = tqdm(total=total, unit="text", desc="Encoding", disable=not show_progress_bar)
        start = time.perf_counter()
        seen = {"tokens": 0}

        def progress(batch: PackedBatch) -> None:
            seen["tokens"] += batch.n_tokens
            bar.update(batch.n_texts)
            rate = seen["tokens"] / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(tok_s=f"{rate:,.0f}", refresh=False)

        if max_tokens_per_batch is None:
            max_tokens_per_batch = default_token_budget(self._device(), batch_size, self.max_length)
        pipe = EncodePipeline(
            self,
            chunked(pairs, chunk_size, first=2 * batch_size),
            max_tokens_per_batch=max_tokens_per_batch,
            batch_size=batch_size,
            token_level=token_level,
            on_batch=progress if show_progress_bar else None,
            # a list that fits in one batch has nothing to overlap: no threads (~1 ms a call)
            overlap=False if total is not None and total <= batch_size else None,
        )
        try:
            yield from pipe
        finally:
            pipe.close()
            bar.close()
            self.last_encode_stats = pipe.summary()

    def _on_devices(
        self, devices, pairs, batch_size, max_tokens_per_batch, chunk_size, show_progress_bar,
        total, token_level=False,
    ) -> Iterator[ChunkResult]:  # fmt: skip
        """:meth:`_pipeline` over several devices (:mod:`llm2vec_fast.multi_device`): chunks
        tokenized and packed here on a thread, as on one device, their batches run by one
        worker process per device as each frees up; each chunk handed out, in input order, once
        all its batches are back."""
        if max_tokens_per_batch is None:  # the parent packs for every worker
            max_tokens_per_batch = default_token_budget(devices[0], batch_size, self.max_length)
        packed = in_background(
            pack_chunks(
                self, chunked(pairs, chunk_size, first=2 * batch_size), max_tokens_per_batch,
                batch_size,
            )
        )  # fmt: skip
        # every chunk passes through here before its batches, so chunks without texts (none
        # come from chunked()) and the order of completion can be tracked
        open_chunks: dict[int, ChunkResult] = {}
        missing: dict[int, int] = {}

        def items():
            for pc in packed:
                n = len(pc.chunk.pairs)
                open_chunks[pc.chunk.index] = ChunkResult(
                    pc.chunk,
                    [None] * n
                    if token_level
                    else np.empty((n, self.model.config.hidden_size), np.float32),
                )
                missing[pc.chunk.index] = n
                for b in pc.batches:
                    yield pc.chunk, b

        next_index = 0
        try:
            for chunk, batch, result in run_on_devices(
                self, devices, items(), show_progress_bar, token_level=token_level, total=total
            ):
                res = open_chunks[chunk.index]
                if token_level:
                    for i, e in zip(batch.indices.tolist(), result):
                        res.embeddings[i] = e.numpy()
                else:
                    res.embeddings[batch.indices] = result.numpy()
                res.tokens += batch.n_tokens
                res.batches += 1
                missing[chunk.index] -= batch.n_texts
                while missing.get(next_index) == 0:  # hand out finished chunks in order
                    del missing[next_index]
                    yield open_chunks.pop(next_index)
                    next_index += 1
        finally:
            packed.close()

    def close_device_pool(self) -> None:
        """End the worker processes that ``encode`` on several devices started (and free the
        memory they hold). A later multi-device ``encode`` starts new ones."""
        close_pools(self.__dict__.get("_device_pools", {}))

    # ------------------------------------------------------------------ internals

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _run_model(self, input_ids, cu_seqlens, position_ids, max_seqlen) -> torch.Tensor:
        return self.model(input_ids, cu_seqlens, position_ids, max_seqlen)

    def _pool(self, hidden, cu_seqlens, pool_mask, input_ids) -> torch.Tensor:
        # the Triton pooling kernel goes with the Triton model path; torch otherwise
        base = self._base_model()
        pool = segment_pool if base.attn_implementation == "triton" else segment_pool_ref
        mode = self.pooling_mode
        if mode == "bos_token":
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError("bos_token pooling: the tokenizer has no BOS token")
            return pool(hidden, cu_seqlens, input_ids == bos, "bos_token")
        if mode == "eos_token":
            mode = "last_token"
        return pool(hidden, cu_seqlens, pool_mask, mode)

    # ------------------------------------------------------------------ saving

    def save(
        self,
        output_path: str | os.PathLike,
        merge_before_save: bool = False,
        save_config: bool = True,
    ):
        """Write a checkpoint directory that this library and the official one both load.

        A model holding an unmerged adapter writes the adapter only (as the official library
        does) unless ``merge_before_save``; otherwise config.json (``_name_or_path`` kept),
        model.safetensors, the tokenizer and llm2vec_config.json.
        """
        from safetensors.torch import save_file

        from llm2vec_fast.compat import (
            make_adapter_config_compatible,
            write_config,
            write_tokenizer,
        )

        out = Path(output_path)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if _is_peft(model):
            if merge_before_save:
                model = self.model = model.merge_and_unload()
            else:
                model.save_pretrained(str(out), safe_serialization=True)
                make_adapter_config_compatible(out)
        if not _is_peft(model):
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
            write_config(model.config, out, name_or_path=self.name_or_path)
        write_tokenizer(self.tokenizer, out)
        if save_config:
            with open(out / LLM2VEC_CONFIG, "w", encoding="utf-8") as f:
                json.dump({k: getattr(self, k) for k in ENCODER_ARGS}, f, indent=4)


def _empty_pooled_texts(chunk) -> list[int]:
    """Input positions of the chunk's non-blank texts whose pooled span came out empty."""
    return [chunk.offset + i for i in chunk.empty_pooled if chunk.pairs[i][1].strip()]


def _warn_empty_pooled(indices: list[int]) -> None:
    """A warning naming (at most five of) the inputs whose pooled span is empty (a blank text
    is the caller's choice, embedded as the official library does, silently)."""
    if not indices:
        return
    n = len(indices)
    shown = ", ".join(map(str, indices[:5])) + (", ..." if n > 5 else "")
    warnings.warn(
        f"llm2vec_fast: {n} non-blank text{'s have' if n > 1 else ' has'} an empty pooled "
        f"span (input {shown}): no token of the text is pooled (it tokenizes to nothing, or "
        "nothing of it fits in doc_max_length tokens), so its embedding does not depend on it",
        UserWarning,
        stacklevel=3,
    )


def _join(instruction: str, text: str) -> str:
    """The official joining: ``instruction.strip() + " " + SEP + text``, or ``SEP + text``."""
    return f"{instruction.strip()} {SEP}{text}" if instruction else f"{SEP}{text}"


def _abspath(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _is_peft(model) -> bool:
    return type(model).__name__.startswith("Peft")


def _load_tokenizer(base_dir: Path, base_weights_path):
    from transformers import AutoTokenizer

    for d in (base_dir, Path(base_weights_path) if base_weights_path else None):
        if d is not None and (
            (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()
        ):
            tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
            break
    else:
        raise CheckpointError(f"no tokenizer files (tokenizer.json) in {base_dir}")
    if not getattr(tok, "is_fast", False):
        raise CheckpointError(f"{d}: a fast (tokenizers) tokenizer is required")
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _load_base(base_dir: Path, base_weights_path, **kwargs):
    """The base encoder of a checkpoint directory, and its ``_name_or_path``.

    In the published LLM2Vec layout (config.json + an MNTP adapter, no weights) the adapter's
    base is loaded, from ``base_weights_path`` or a local ``base_model_name_or_path``, and the
    adapter is merged into it, as the official library does.
    """
    raw = read_json(base_dir / "config.json") if (base_dir / "config.json").is_file() else {}
    name_or_path = raw.get("_name_or_path", "")
    has_weights = any(base_dir.glob("*.safetensors")) and not all(
        p.name.startswith("adapter_") for p in base_dir.glob("*.safetensors")
    )
    if is_adapter_dir(base_dir) and not has_weights:
        adapter_cfg = read_json(base_dir / "adapter_config.json")
        base = base_weights_path or adapter_cfg.get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise CheckpointError(
                f"{base_dir} is an adapter whose base model is {adapter_cfg.get('base_model_name_or_path')!r}, "
                "which is not a local directory; pass base_weights_path= (the local base checkpoint)"
            )
        hf_config = load_hf_config(base_dir if raw else base)
        model = build_encoder(hf_config, read_state_dict(base), source=str(base), **kwargs)
        model = apply_adapter(model, base_dir, merge=True)
        return model, name_or_path
    return load_encoder(base_dir, **kwargs), name_or_path


def _pair(i: int, s) -> tuple[str, str]:
    if isinstance(s, str):
        return ("", s)
    if (
        isinstance(s, (list, tuple))
        and len(s) >= 2
        and isinstance(s[0], str)
        and isinstance(s[1], str)
    ):
        return (s[0], s[1])
    what = "None" if s is None else type(s).__name__
    if isinstance(s, (list, tuple)):
        what = f"{what} of {[type(x).__name__ for x in s]}"
    raise TypeError(
        f"sentence {i} is {what}; expected a string or an [instruction, text] pair of strings"
    )


class _PairStream:
    """An iterator of input items checked one at a time, as :func:`_as_pairs` checks a list."""

    def __init__(self, items: Iterator):
        self._items = items
        self._i = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, str]:
        item = next(self._items)
        pair = _pair(self._i, item)
        self._i += 1
        return pair


def _iter_pairs(sentences) -> list[tuple[str, str]] | _PairStream:
    """:func:`_as_pairs` for lists and other collections (all checked now); an iterator or
    generator becomes a :class:`_PairStream`, checked as it is read."""
    if isinstance(sentences, Iterator) and not isinstance(sentences, (str, bytes)):
        return _PairStream(sentences)
    return _as_pairs(sentences)


def _as_pairs(sentences) -> list[tuple[str, str]]:
    """Normalise the accepted input forms to ``(instruction, text)`` pairs; clear errors."""
    if sentences is None:
        raise TypeError(
            "encode() got None; expected a string or a list of strings / [instruction, text] pairs"
        )
    if isinstance(sentences, str):
        return [("", sentences)]
    if isinstance(sentences, (bytes, bytearray)):
        raise TypeError("encode() got bytes; decode them to str first")
    if isinstance(sentences, np.ndarray):
        sentences = sentences.tolist()
    if not isinstance(sentences, (list, tuple)):
        try:
            sentences = list(sentences)
        except TypeError:
            raise TypeError(
                f"encode() expected a string or a list of texts; got {type(sentences).__name__}"
            ) from None
    if len(sentences) == 0:
        raise ValueError("encode() got an empty list of sentences")
    # one MEDI item: [instruction, text, ..., int]. Two strings come first, so a flat list
    # with a number in it (["a", 3], ["a", None, 3]) stays a list whose bad item is named.
    if (
        len(sentences) >= 3
        and isinstance(sentences[0], str)
        and isinstance(sentences[1], str)
        and isinstance(sentences[-1], int)
        and not isinstance(sentences[-1], bool)
    ):
        sentences = [sentences]
    return [_pair(i, s) for i, s in enumerate(sentences)]
