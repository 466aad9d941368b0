"""The options of varlen (packed) attention, written once: every attention op, launcher and
PyTorch path after ``(q, k, v)`` (and the backward's saved tensors) takes one :class:`Varlen`;
the custom ops' schema (:data:`SCHEMA`) is derived from it."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch


class Varlen(NamedTuple):
    """``cu_seqlens`` int32 ``[n_texts + 1]`` (text boundaries, 0 .. T; empty texts allowed);
    ``max_seqlen`` at least the longest text (None: read from ``cu_seqlens``); ``causal``
    (False: LLM2Vec's bidirectional attention); ``softmax_scale`` (None: ``D ** -0.5``);
    ``dropout_p`` in [0, 1) on the attention probabilities, whose mask is a function of ``seed``
    (an int, needed when ``dropout_p > 0``) and ``offset`` (an int in [0, 2**32)); ``flash``:
    always the Triton flash kernel (otherwise only where it pays, see
    :mod:`llm2vec_fast.kernels.ops`)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int | None = None
    causal: bool = False
    softmax_scale: float | None = None
    dropout_p: float = 0.0
    seed: int | None = None
    offset: int = 0
    flash: bool = False

    def scale(self, head_dim: int) -> float:
        """The softmax scale for ``head_dim``."""
        return self.softmax_scale if self.softmax_scale is not None else head_dim**-0.5

    def normalized(self, flash: bool) -> Varlen:
        """These options as the ops' schema types (Python int/float/bool), with ``flash``."""
        return Varlen(
            self.cu_seqlens, None if self.max_seqlen is None else int(self.max_seqlen),
            bool(self.causal), None if self.softmax_scale is None else float(self.softmax_scale),
            float(self.dropout_p), None if self.seed is None else int(self.seed),
            int(self.offset), flash,
        )  # fmt: skip

    def longest(self) -> int:
        """``max_seqlen``, or the longest text of ``cu_seqlens`` (a read of the tensor)."""
        if self.max_seqlen is not None:
            return self.max_seqlen
        cu = self.cu_seqlens
        return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0


_SCHEMA_TYPES = {"torch.Tensor": "Tensor", "int | None": "int?", "float | None": "float?",
                 "bool": "bool", "float": "float", "int": "int"}  # fmt: skip
# the custom ops' schema of these options, e.g. "Tensor cu_seqlens, int? max_seqlen, ..."
SCHEMA = ", ".join(
    f"{_SCHEMA_TYPES[getattr(t, '__forward_arg__', t)]} {name}"
    for name, t in Varlen.__annotations__.items()
)

# the Python entry points' signature: (q, k, v, cu_seqlens, max_seqlen=None, ..., offset=0)
SIGNATURE = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("q", "k", "v")]
    + [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=Varlen._field_defaults.get(name, inspect.Parameter.empty),
        )
        for name in Varlen._fields
        if name != "flash"
    ]
)
