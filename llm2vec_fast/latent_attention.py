"""Latent-attention pooling (NV-Embed, Lee et al. 2024): a trainable head in place of mean pooling.

LLM2Vec pools a text by the mean of its last hidden states. NV-Embed, built on the same first
step (the causal mask removed), puts a latent attention layer before that mean: each token's
hidden state ``h`` (a row of ``H [n, d]``) is the query of a cross-attention whose keys and
values are a trainable latent array ``L [r, d]`` (r = 512, 8 heads), then a feed-forward
block, each with a pre-LayerNorm and a residual, and only then the mean over the text's pooled
tokens::

    h1 = h + to_out(attention(to_q(LN(h)), to_k(LN_c(L)), to_v(LN_c(L))))
    h2 = h1 + W2 GEGLU(W1 LN2(h1) + b1) + b2          GEGLU(x, g) = x * gelu(g)
    embedding = mean over the pooled tokens of h2

This module follows NV-Embed's public model code (its ``LatentAttentionModel``): the same
layers, the same defaults (``r = 512``, 8 heads, each head as wide as the hidden state, a 4x
GEGLU feed-forward, LayerNorms on the queries and on the latents, bias-free attention
projections) and the same parameter names (``latents``, ``cross_attend_blocks.0.fn.to_q``
...), so a state dict of its head loads into :class:`LatentAttentionHead` by name. The
difference is the input: NV-Embed runs the head over a padded ``[B, N, d]`` batch; here it runs
over the packed ``[T, d]`` rows of the pooled tokens only. No padding is computed and no mask
is needed: every token attends to the same shared latents, never to another token, so a text's
vector cannot depend on its neighbours in the batch (tokens outside the pooled span, e.g. the
instruction, are left out before the head, which NV-Embed's mean excludes after it).

Three exact rewrites make it cheaper than NV-Embed's code:

* the last linear map and the residual commute with the mean, so the feed-forward's second
  projection ``W2`` runs once per text on the pooled ``GEGLU`` output instead of once per token
  (``mean(W2 g + b2 + h1) = W2 mean(g) + b2 + mean(h1)``), and the mean is one pass over
  ``[g, h1]`` (the pooling kernel on the GPU);
* the latents' keys and values are computed once per batch, not once per text as NV-Embed
  repeats the latents over its batch (and, without gradients, kept across batches);
* the attention over the latents is :func:`llm2vec_fast.kernels.latent_attention`, a flash-style
  kernel on the GPU (no ``[T, heads, r]`` score matrix in memory), SDPA on torch's path.

The head is a submodule of the encoder (``EncoderModel.latent_attention``), so it moves, casts,
trains and is wrapped (PEFT, DDP) with the model; its weights are saved beside the adapter in
``latent_attention.safetensors`` with its shape in the file's metadata (and a copy in
``llm2vec_config.json``). The official llm2vec library has no such pooling and cannot read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llm2vec_fast.checkpoint import LATENT_ATTENTION_FILE, CheckpointError
from llm2vec_fast.kernels import Linear, segment_pool
from llm2vec_fast.kernels import latent_attention as latent_attention_op
from llm2vec_fast.kernels.latent_attention import uses_triton as latent_kernel_runs
from llm2vec_fast.model import base_model

__all__ = [
    "LATENT_ATTENTION_FILE",
    "POOLING_MODE",
    "LatentAttentionConfig",
    "LatentAttentionHead",
    "attach_head",
    "head_of",
    "latent_head",
    "read_head",
    "save_head",
]

POOLING_MODE = "latent_attention"


@dataclass(frozen=True)
class LatentAttentionConfig:
    """The head's shape. ``head_dim`` None: the model's hidden size (NV-Embed's
    ``cross_dim_head``: each of the ``num_heads`` heads is as wide as the hidden state)."""

    num_latents: int = 512
    num_heads: int = 8
    head_dim: int | None = None
    ff_mult: int = 4

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name == "head_dim":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(
                    f"latent attention: {f.name} must be a positive integer; got {v!r}"
                )

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> LatentAttentionConfig:
        """A config from its JSON form; unknown keys or bad values raise CheckpointError."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise CheckpointError(f"{source}: unknown latent attention settings {sorted(unknown)}")
        try:
            return cls(**data)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e

    def to_json(self) -> dict:
        return asdict(self)


class _PreNorm(nn.Module):
    """``fn(LN(x), context=LN_c(context))``: NV-Embed's PreNorm (names kept)."""

    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_q = Linear(dim, heads * head_dim, bias=False)
        self.to_kv = Linear(dim, 2 * heads * head_dim, bias=False)
        self.to_out = Linear(heads * head_dim, dim, bias=False)


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(Linear(dim, dim * mult * 2), _GEGLU(), Linear(dim * mult, dim))


class LatentAttentionHead(nn.Module):
    """NV-Embed's latent attention layer and mean pooling over packed hidden states.

    Args:
        hidden_size: the encoder's hidden size ``d``.
        config: the head's shape (:class:`LatentAttentionConfig`).

    ``fused``: run the latent attention and the pooling through our Triton kernels (set by the
    encoder's kernel choice, as ``EncoderModel.attn_implementation == "triton"``); torch's path
    otherwise. Heads wider than 256 (NV-Embed's default on a model wider than that) keep SDPA
    even then: the kernel takes up to 256, and at such widths the projections dominate. The parameters start as NV-Embed's do: latents from a standard normal, the
    linear layers and LayerNorms at torch's defaults.
    """

    def __init__(self, hidden_size: int, config: LatentAttentionConfig | None = None):
        super().__init__()
        config = config or LatentAttentionConfig()
        self.config = config
        self.hidden_size = d = int(hidden_size)
        head_dim = config.head_dim or d
        self.cross_attend_blocks = nn.ModuleList([
            _PreNorm(d, _CrossAttention(d, config.num_heads, head_dim), context_dim=d),
            _PreNorm(d, _FeedForward(d, config.ff_mult)),
        ])  # fmt: skip
        self.latents = nn.Parameter(torch.randn(config.num_latents, d))
        self.fused = False
        self._kv_cache: tuple | None = None

    def latent_keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the latents, ``[r, heads, head_dim]`` each: the same for every
        token of every batch (NV-Embed computes them again for each text). Without gradients
        they are kept until a weight they depend on changes (moved, cast, trained, loaded)."""
        attn_block = self.cross_attend_blocks[0]
        attn = attn_block.fn
        params = (self.latents, attn_block.norm_context.weight, attn_block.norm_context.bias,
                  attn.to_kv.weight)  # fmt: skip
        # .to() may swap a parameter's data in place: its device and dtype are part of the key
        key = tuple((id(p), p._version, p.device, p.dtype) for p in params)
        cached = self._kv_cache
        if not torch.is_grad_enabled() and cached is not None and cached[0] == key:
            return cached[1]
        kv = attn.to_kv(attn_block.norm_context(self.latents))
        k, v = kv.view(-1, 2, attn.heads, attn.head_dim).unbind(1)
        self._kv_cache = (key, (k, v)) if not torch.is_grad_enabled() else None
        return k, v

    def forward(
        self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden ``[T, d]`` (packed texts), cu_seqlens ``[n + 1]`` int32, pool_mask ``[T]`` bool
        (the tokens each text's mean takes; None: all) -> ``[n, d]`` float32 (float64 for
        float64 hidden states), as ``segment_pool`` returns. As with ``mean``, a text with no
        pooled token pools its whole segment, and a text with no token at all is zeros."""
        if pool_mask is not None and not bool(pool_mask.all()):
            pool_mask = _whole_segment_where_empty(pool_mask, cu_seqlens)
            counts = F.pad(pool_mask.to(torch.int32).cumsum(0), (1, 0))
            cu_seqlens = counts[cu_seqlens.long()].to(torch.int32)
            hidden = hidden[pool_mask]
        attn_block, ff_block = self.cross_attend_blocks
        attn = attn_block.fn
        x = hidden.to(self.latents.dtype)
        q = attn.to_q(attn_block.norm(x)).view(-1, attn.heads, attn.head_dim)
        k, v = self.latent_keys_values()
        if self.fused and latent_kernel_runs(q, k, v):  # heads up to 256 wide
            a = latent_attention_op(q, k, v)
        else:  # SDPA over [1, heads, tokens | latents, head_dim]
            a = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
            )[0].transpose(0, 1)
        h1 = x + attn.to_out(a.reshape(x.shape[0], -1))
        net = ff_block.fn.net
        g = net[1](net[0](ff_block.norm(h1)))
        gh = torch.cat([g, h1], dim=-1)
        if self.fused:  # the pooling kernel: one read of the rows
            ones = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            pooled = segment_pool(gh, cu_seqlens, ones, "mean")
        else:
            pooled = _segment_mean(gh, cu_seqlens)
        pooled_g, pooled_h1 = pooled.split([g.shape[-1], h1.shape[-1]], dim=-1)
        out = F.linear(pooled_g.to(net[2].weight.dtype), net[2].weight).to(pooled.dtype)
        # the bias only where a text has tokens (an empty span's mean is zero, as with "mean")
        nonempty = (cu_seqlens[1:] > cu_seqlens[:-1]).unsqueeze(-1)
        return out + pooled_h1 + net[2].bias.to(pooled.dtype) * nonempty


def _whole_segment_where_empty(pool_mask: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``pool_mask`` with every text that has no pooled token pooled whole (``mean``'s rule)."""
    dev = pool_mask.device
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().to(dev)
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=dev), lengths)
    counts = torch.zeros(lengths.numel(), dtype=torch.int32, device=dev)
    counts.index_add_(0, seg, pool_mask.to(torch.int32))
    return pool_mask | (counts == 0)[seg]


def _segment_mean(rows: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The mean of each text's rows (contiguous), float32 (float64 for float64 rows); zeros for
    a text with none. A sum per text: on the CPU several times faster than the scatter of
    ``segment_pool_ref`` over the head's wide rows."""
    dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if not lengths:
        return rows.new_zeros((0, rows.shape[-1]), dtype=dtype)
    sums = torch.stack([part.sum(0, dtype=dtype) for part in rows.split(lengths)])
    return sums / torch.tensor(lengths, dtype=dtype, device=rows.device).clamp_min(1)[:, None]


# --------------------------------------------------------------------------- on the encoder


def head_of(model: nn.Module) -> LatentAttentionHead | None:
    """The latent-attention head of an encoder (inside a PEFT wrapper too), or None."""
    return getattr(base_model(model), "latent_attention", None)


def latent_head(model: nn.Module) -> LatentAttentionHead:
    """The encoder's latent-attention head; a ValueError naming the way to get one if it has
    none."""
    head = head_of(model)
    if head is None:
        raise ValueError(
            "pooling_mode='latent_attention' needs a trained latent-attention head, and this "
            "model has none: train one (llm2vec-fast train simcse|supervised --pooling "
            "latent_attention) and load the output directory, or use another pooling mode"
        )
    return head


def attach_head(model: nn.Module, head: LatentAttentionHead) -> LatentAttentionHead:
    """Make ``head`` the encoder's (``EncoderModel.latent_attention``), on the model's device
    and in its dtype; returns it."""
    base = base_model(model)
    p = next(base.parameters())
    base.latent_attention = head.to(device=p.device, dtype=p.dtype)
    base.attn_implementation = base.attn_implementation  # hands the head its kernels (fused)
    return base.latent_attention


def save_head(head: LatentAttentionHead, directory: str | Path) -> Path:
    """Write ``directory/latent_attention.safetensors`` (the head's shape in its metadata)."""
    from safetensors.torch import save_file

    path = Path(directory) / LATENT_ATTENTION_FILE
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    meta = {"format": "pt", "hidden_size": str(head.hidden_size)}
    meta["config"] = json.dumps(head.config.to_json())
    save_file(state, str(path), metadata=meta)
    return path


def read_head(directory: str | Path, hidden_size: int) -> LatentAttentionHead:
    """The head saved in ``directory`` for an encoder of ``hidden_size`` (float32, CPU).

    Raises :class:`~llm2vec_fast.checkpoint.CheckpointError` naming the problem: no head file,
    a file that is not safetensors, a head for another hidden size, missing, unexpected or
    wrongly shaped tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / LATENT_ATTENTION_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {LATENT_ATTENTION_FILE}: pooling_mode='latent_attention' needs "
            "a trained head (llm2vec-fast train simcse|supervised --pooling latent_attention)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        cfg_json = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its metadata 'config' is not JSON: {e}") from e
    config = LatentAttentionConfig.from_json(cfg_json, str(path))
    saved_hidden = meta.get("hidden_size")
    if saved_hidden is not None and int(saved_hidden) != int(hidden_size):
        raise CheckpointError(
            f"{path} is a head for hidden size {saved_hidden}; this model's is {hidden_size}"
        )
    head = LatentAttentionHead(hidden_size, config)
    expected = head.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors missing {missing[:4]}, unexpected {unexpected[:4]} for a latent "
            f"attention head of {config}"
        )
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(state[k].shape)}; a head of {config} on hidden "
                f"size {hidden_size} has {tuple(t.shape)}"
            )
        if not torch.isfinite(state[k]).all():
            raise CheckpointError(f"{path}: {k} holds non-finite values (corrupt weights)")
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head
