"""A plain PyTorch transcription of NV-Embed's latent attention layer (``LatentAttentionModel``
in its public model code), the reference ``llm2vec_fast.latent_attention`` is held against.

Written from that design, over a padded ``[B, N, d]`` batch and a mask as NV-Embed runs it:
pre-LayerNorm cross-attention from the tokens to a trainable latent array (keys and values
from the normalised latents, bias-free projections, ``heads`` heads of ``head_dim``), a
residual, a pre-LayerNorm GEGLU feed-forward (4x) with a residual, then the masked mean. The
attention is an explicit softmax (not SDPA) so the reference shares no kernel with the code
under test; ``cross_attend_blocks[0].fn.sdpa = True`` calls SDPA as NV-Embed does (benchmarks). The module and parameter names are NV-Embed's: a state dict moves between this and
``LatentAttentionHead`` by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreNorm(nn.Module):
    def __init__(self, dim, fn, context_dim=None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x, context=None):
        x = self.norm(x)
        if self.norm_context is not None:
            return self.fn(x, self.norm_context(context))
        return self.fn(x)


class Attention(nn.Module):
    def __init__(self, query_dim, context_dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.sdpa = False
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x, context):
        b, n, _ = x.shape
        h, dh = self.heads, self.dim_head
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)

        def split(t):  # [b, len, h*dh] -> [b, h, len, dh]
            return t.reshape(b, t.shape[1], h, dh).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        if self.sdpa:  # as NV-Embed calls it (benchmarks)
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2) * dh**-0.5, dim=-1) @ v
        out = out.transpose(1, 2).reshape(b, n, h * dh)
        return self.to_out(out)


class GEGLU(nn.Module):
    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x):
        return self.net(x)


class LatentAttentionModel(nn.Module):
    """``forward(hiddens [B, N, d], mask [B, N])`` -> ``[B, d]`` (masked mean after the layer)."""

    def __init__(self, hidden_dim, num_latents=512, heads=8, dim_head=None, mult=4):
        super().__init__()
        dim_head = dim_head or hidden_dim
        self.cross_attend_blocks = nn.ModuleList([
            PreNorm(hidden_dim, Attention(hidden_dim, hidden_dim, heads, dim_head), hidden_dim),
            PreNorm(hidden_dim, FeedForward(hidden_dim, mult)),
        ])  # fmt: skip
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_dim))

    def forward(self, hiddens, mask):
        cross_attn, cross_ff = self.cross_attend_blocks
        latents = self.latents.expand(hiddens.shape[0], -1, -1)
        hiddens = cross_attn(hiddens, latents) + hiddens
        hiddens = cross_ff(hiddens) + hiddens
        m = mask.unsqueeze(-1).to(hiddens.dtype)
        return (hiddens * m).sum(1) / mask.sum(1, keepdim=True).to(hiddens.dtype)


def padded(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor):
    """Packed ``[T, d]`` rows -> padded ``[B, N, d]`` and the pooled-token mask ``[B, N]``."""
    cu = cu_seqlens.tolist()
    lens = [b - a for a, b in zip(cu[:-1], cu[1:])]
    n = max(lens) if lens else 0
    out = hidden.new_zeros(len(lens), n, hidden.shape[-1])
    mask = torch.zeros(len(lens), n, dtype=torch.bool)
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        out[i, : b - a] = hidden[a:b]
        mask[i, : b - a] = pool_mask[a:b]
    return out, mask
