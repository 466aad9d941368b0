"""The model and pooling over one packed batch, and the choice of kernels they run.

:class:`EncoderRunner` is what the pipeline, the worker processes, the batch job, training and
the sentence-transformers module run a :class:`~llm2vec_fast.packing.PackedBatch` (on the
model's device) through: :meth:`~EncoderRunner.run_model` gives the last hidden states,
:meth:`~EncoderRunner.pool` one vector per text. :meth:`~EncoderRunner.select_kernels` chooses
our Triton kernels or torch's path for where the model is, after
:meth:`~EncoderRunner.check_kernels` compares them on that device.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch

from llm2vec_fast.kernels import segment_pool, segment_pool_ref
from llm2vec_fast.latent_attention import POOLING_MODE as LATENT_POOLING
from llm2vec_fast.latent_attention import head_of, latent_head
from llm2vec_fast.loading import base_model
from llm2vec_fast.packing import PackedBatch

__all__ = ["KERNEL_CHECK_TOL", "EncoderRunner"]

# Relative L2 error allowed between our kernels and torch's path on the same random input in
# check_kernels: a few times what two correct implementations differ by through a whole model
# in that dtype; a wrong kernel is off by O(1).
KERNEL_CHECK_TOL = {torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}


class EncoderRunner:
    """Model + pooling over packed batches.

    Args:
        model: an :class:`~llm2vec_fast.model.EncoderModel` (or a ``PeftModel`` around one).
        pooling_mode: as ``LLM2Vec``'s (``eos_token`` pools the last token;
            ``latent_attention`` runs the model's latent-attention head).
        tokenizer: its ``bos_token_id`` is the token ``bos_token`` pooling looks for.

    ``auto_kernels``: choose the kernels again whenever the model moves (the owner calls
    :meth:`select_kernels` after ``.to()``), as ``attn_implementation="auto"`` asks.
    """

    def __init__(self, model: torch.nn.Module, pooling_mode: str = "mean", tokenizer=None):
        if pooling_mode == LATENT_POOLING:
            latent_head(model)  # refuses a model without a head now, not at the first batch
        self.model = model
        self.pooling_mode = pooling_mode
        self.tokenizer = tokenizer
        self.auto_kernels = False
        self._kernel_choice: tuple | None = None

    # ------------------------------------------------------------------ where and what

    @property
    def base_model(self) -> torch.nn.Module:
        """The encoder inside a PEFT wrapper, or the model itself."""
        return base_model(self.model)

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def attn_implementation(self) -> str:
        """The kernels the model runs now: ``triton``, ``sdpa`` or ``eager``."""
        return self.base_model.attn_implementation

    # ------------------------------------------------------------------ running

    def run_model(self, batch: PackedBatch) -> torch.Tensor:
        """Last hidden states ``[total, hidden]`` of a batch on the model's device."""
        return self.model(batch.input_ids, batch.cu_seqlens, batch.position_ids, batch.max_seqlen)

    def pool(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """One vector per text ``[b, hidden]`` (the hidden dtype) by ``pooling_mode``."""
        # the Triton pooling kernel goes with the Triton model path; torch otherwise
        pool = segment_pool if self.attn_implementation == "triton" else segment_pool_ref
        mode = self.pooling_mode
        if mode == "bos_token":
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError("bos_token pooling: the tokenizer has no BOS token")
            return pool(hidden, batch.cu_seqlens, batch.input_ids == bos, "bos_token")
        if mode == "eos_token":
            mode = "last_token"
        if mode == LATENT_POOLING:  # the trained head, then the mean (latent_attention.py)
            return latent_head(self.model)(hidden, batch.cu_seqlens, batch.pool_mask)
        return pool(hidden, batch.cu_seqlens, batch.pool_mask, mode)

    def embed(self, batch: PackedBatch) -> torch.Tensor:
        """:meth:`run_model` then :meth:`pool`."""
        return self.pool(self.run_model(batch), batch)

    @staticmethod
    def token_rows(hidden: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled tokens' hidden states (float32 ``[kept, hidden]``) and where each text's
        rows end: text ``i``'s rows are ``[ends[i-1], ends[i])`` (int32 ``[b]``)."""
        keep = batch.pool_mask
        counts = torch.nn.functional.pad(keep.to(torch.int32).cumsum(0), (1, 0))
        return hidden[keep].float(), counts[batch.cu_seqlens[1:].long()]

    # ------------------------------------------------------------------ kernels

    def select_kernels(self, *, check_on_cpu: bool = False, recheck: bool = False) -> str:
        """Choose the model's kernels as ``attn_implementation="auto"`` does; returns the choice.

        On a CUDA device in float16/bfloat16: ``triton`` when our kernels agree with torch's
        path on this device (:meth:`check_kernels`), else ``sdpa`` with a warning naming the
        problem. Anywhere else ``sdpa`` (float32 keeps torch's path, the reference precision).
        ``LLM2VEC_FAST_KERNELS=torch`` forces ``sdpa``. ``check_on_cpu``: run the check on a
        CPU model too (tests, under ``TRITON_INTERPRET=1``). The choice is kept per device and
        dtype (moving the model chooses again); ``recheck`` runs the check again anyway."""
        base = self.base_model
        dev, dtype = self.device, next(base.parameters()).dtype
        wanted = os.environ.get("LLM2VEC_FAST_KERNELS", "auto").strip().lower()
        key = (dev, dtype, wanted, check_on_cpu)
        chosen = self._kernel_choice
        if chosen is not None and chosen[0] == key and not recheck:  # checked here already
            base.attn_implementation = chosen[1]
            return chosen[1]
        on_gpu = dev.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        choice = "sdpa"
        if wanted not in ("torch", "sdpa", "0") and (on_gpu or check_on_cpu):
            problem = self.check_kernels()
            if problem is None:
                choice = "triton"
            else:
                warnings.warn(
                    f"llm2vec-fast: the Triton kernels failed their check on {dev} ({problem}); "
                    "running torch's path (attn_implementation='sdpa')",
                    RuntimeWarning,
                    stacklevel=2,
                )
        base.attn_implementation = choice
        self._kernel_choice = (key, choice)
        return choice

    def check_kernels(self, lengths: Sequence[int] = (1, 7, 97, 130, 33)) -> str | None:
        """Run the model with our Triton kernels and with torch SDPA on random tokens in texts
        of ``lengths`` (packed together) on its device; None when every text's hidden states
        and mean pooling agree within the dtype's tolerance, else what went wrong. The model is
        left on ``sdpa``."""
        base = self.base_model
        dev, dtype = self.device, next(base.parameters()).dtype
        tol = KERNEL_CHECK_TOL.get(dtype, 1e-3)
        gen = torch.Generator().manual_seed(1234)
        ids = torch.randint(0, base.config.vocab_size, (sum(lengths),), generator=gen)
        texts = [t.tolist() for t in ids.split(list(lengths))]
        batch = PackedBatch.in_order(texts, pool_lengths=list(lengths)).to(dev)
        cu, keep = batch.cu_seqlens, batch.pool_mask
        cu_list = cu.tolist()
        try:
            with torch.inference_mode():
                base.attn_implementation = "sdpa"
                ref = self.run_model(batch).float()
                base.attn_implementation = "triton"
                got = self.run_model(batch).float()
                pooled = [("mean", segment_pool(got, cu, keep, "mean"),
                           segment_pool_ref(got, cu, keep, "mean"))]  # fmt: skip
                head = head_of(self.model)
                if head is not None:  # the head's fused path against its torch path
                    head.fused = True
                    fused = head(got, cu, keep)
                    head.fused = False
                    pooled.append(("latent-attention", fused, head(got, cu, keep)))
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
        for what, out, want in pooled:
            out, want = out.float(), want.float()
            err = float((out - want).norm() / want.norm().clamp_min(1e-12))
            if err > tol:
                return f"{what} pooling differs from torch's by {err:.3g} (rel. L2)"
        return None
