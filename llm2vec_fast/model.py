"""The encoder: a decoder-only LLM run over packed, padding-free input.

One batch is ``input_ids [T]`` (all texts back to back), ``cu_seqlens [n+1]`` (text
boundaries), ``position_ids [T]`` (0..len-1 inside each text) and ``max_seqlen``; every layer
works on ``[T, hidden]`` and attention is the only place that sees the boundaries. Tensors in,
tensors out: the backend (torch's ops or our kernels) is chosen when the model is built, or
switched by setting :attr:`EncoderModel.attn_implementation`, never passed to ``forward``.

Module and parameter names follow HF's base models (``embed_tokens``, ``layers.N.self_attn.q_proj``,
``layers.N.mlp.gate_proj``, ``norm``), so HF checkpoints and PEFT adapters load by name.
Families: Llama (incl. Llama-3 rope scaling), Mistral, Qwen2 (qkv bias), Gemma (scaled
embeddings, ``(1 + w)`` RMSNorm, GeGLU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from llm2vec_fast.kernels import (
    Linear,
    apply_rope,
    gated_act,
    rms_norm,
    varlen_attention,
    varlen_attention_ref,
    varlen_attention_sdpa,
)

FAMILIES = ("llama", "mistral", "qwen2", "gemma")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "triton")
_ATTENTION = {
    "eager": varlen_attention_ref,
    "sdpa": varlen_attention_sdpa,
    "triton": varlen_attention,
}
# our activation names -> the gated-activation kernel's (absent: no kernel, torch runs it)
_KERNEL_ACT = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
}

_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": lambda x: F.gelu(x),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


def is_peft(model) -> bool:
    """True for a PEFT wrapper (``PeftModel``) around the encoder."""
    return type(model).__name__.startswith("Peft")


def base_model(model):
    """The encoder inside a PEFT wrapper, or the model itself."""
    return model.get_base_model() if is_peft(model) else model


@dataclass
class EncoderConfig:
    """The shape of an encoder, read from an HF ``PretrainedConfig`` by :meth:`from_hf`."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @classmethod
    def from_hf(cls, hf_config) -> EncoderConfig:
        family = getattr(hf_config, "model_type", None)
        if family not in FAMILIES:
            raise ValueError(
                f"model type {family!r} is not supported; supported families: {', '.join(FAMILIES)}"
            )
        heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        if family == "gemma":
            act = getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act
        else:
            act = hf_config.hidden_act
        if act not in _ACTIVATIONS:
            raise ValueError(f"activation {act!r} is not supported; known: {sorted(_ACTIVATIONS)}")
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return cls(
            family=family,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            hidden_act=act,
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        )


class RMSNorm(nn.Module):
    """HF's RMSNorm: float32 statistics; Llama scales after casting back (``w * x``), Gemma
    scales in float32 by ``(1 + w)``."""

    def __init__(self, dim: int, eps: float, gemma: bool = False):
        super().__init__()
        self.eps = eps
        self.gemma = gemma
        self.weight = nn.Parameter(torch.zeros(dim) if gemma else torch.ones(dim))
        self.kernel = False  # our RMSNorm kernel (set by EncoderModel.attn_implementation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel:
            return rms_norm(x, self.weight, self.eps, gemma=self.gemma)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (h * (1.0 + self.weight.float())).to(dtype)
        return self.weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.kernels = False  # our RoPE kernel, its rope inputs (set with ``attend``)
        self.attend = varlen_attention_sdpa
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = Linear(h, self.num_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = Linear(h, self.num_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = Linear(h, self.num_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, h, bias=cfg.o_bias)

    def forward(self, x, rope, cu_seqlens, max_seqlen, dropout_p=0.0):
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        if self.kernels:  # cos/sin computed in the kernel from (position_ids, inv_freq, scaling)
            q, k = apply_rope(q, k, *rope)
        else:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        o = self.attend(q, k, v, cu_seqlens, max_seqlen, causal=self.causal, dropout_p=dropout_p)
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(h, i, bias=cfg.mlp_bias)
        self.up_proj = Linear(h, i, bias=cfg.mlp_bias)
        self.down_proj = Linear(i, h, bias=cfg.mlp_bias)
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.kernel_act = _KERNEL_ACT.get(cfg.hidden_act)
        self.kernel = False  # our gated-activation kernel (set by EncoderModel.attn_implementation)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.kernel and self.kernel_act is not None:
            return self.down_proj(gated_act(gate, up, self.kernel_act))
        if torch.is_grad_enabled():
            return self.down_proj(self.act(gate) * up)
        # inference: reuse the [tokens, intermediate] buffer instead of allocating two more
        gate = F.silu(gate, inplace=True) if self.act is F.silu else self.act(gate)
        return self.down_proj(gate.mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, causal: bool = False):
        super().__init__()
        gemma = cfg.family == "gemma"
        self.self_attn = Attention(cfg, causal)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, gemma)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, gemma)

    def forward(self, x, rope, cu_seqlens, max_seqlen, dropout_p=0.0):
        h = self.input_layernorm(x)
        x = x + self.self_attn(h, rope, cu_seqlens, max_seqlen, dropout_p)
        return x + self.mlp(self.post_attention_layernorm(x))


def rope_tables(hf_config) -> tuple[torch.Tensor, float]:
    """inverse frequencies and attention scaling, computed by transformers' own rope code
    for the config's rope type (default, llama3, linear, dynamic ...)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(config=hf_config)
    return rope.inv_freq.detach().float().clone(), float(rope.attention_scaling)


class EncoderModel(nn.Module):
    """A decoder-only transformer used as an encoder over packed input.

    ``attn_implementation``: ``"sdpa"`` (torch SDPA per text, the default), ``"eager"`` (explicit
    softmax, the test reference) or ``"triton"`` (our kernels for RMSNorm, RoPE, the gated
    activation and varlen attention on CUDA tensors, or under ``TRITON_INTERPRET=1``; the PyTorch
    references elsewhere). ``causal=False`` is LLM2Vec's bidirectional mode.

    Training: ``attention_dropout`` (from the HF config, or set it) drops attention probabilities
    in training mode, as HF's attention does (SimCSE uses 0.3); ``gradient_checkpointing``
    recomputes each layer in the backward pass instead of keeping its activations (the dropout
    masks are replayed from the saved RNG state).
    """

    def __init__(self, hf_config, attn_implementation: str = "sdpa", causal: bool = False):
        super().__init__()
        cfg = EncoderConfig.from_hf(hf_config)
        self.cfg = cfg
        self.config = hf_config
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, causal) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.family == "gemma")
        self.attn_implementation = attn_implementation
        inv_freq, scaling = rope_tables(hf_config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_scaling = scaling
        self.embed_scale = cfg.hidden_size**0.5 if cfg.family == "gemma" else None
        self.attention_dropout = float(getattr(hf_config, "attention_dropout", 0.0) or 0.0)
        self.gradient_checkpointing = False
        # the latent-attention pooling head, when the encoder pools with one (set by loading or
        # training: llm2vec_fast.latent_attention); not part of forward, which ends at the norm
        self.latent_attention: nn.Module | None = None

    @property
    def causal(self) -> bool:
        """Whether each token sees only the tokens before it (False: LLM2Vec's bidirectional)."""
        return self.layers[0].self_attn.causal if len(self.layers) else False

    @causal.setter
    def causal(self, value: bool) -> None:
        for layer in self.layers:
            layer.self_attn.causal = bool(value)

    @property
    def attn_implementation(self) -> str:
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str) -> None:
        """Switch the backend: every submodule takes its ops from it (torch's, or our kernels)."""
        if value not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"unknown attn_implementation {value!r}; expected one of {ATTN_IMPLEMENTATIONS}"
            )
        self._attn_implementation = value
        kernels = value == "triton"
        if getattr(self, "latent_attention", None) is not None:
            self.latent_attention.fused = kernels
        for m in self.modules():
            if isinstance(m, (RMSNorm, MLP)):
                m.kernel = kernels
            elif isinstance(m, Attention):
                m.kernels, m.attend = kernels, _ATTENTION[value]

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """cos/sin ``[T, 1, head_dim]`` for ``position_ids [T]``, as HF computes them."""
        freqs = position_ids.float()[:, None] * self.inv_freq.to(position_ids.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype)[:, None, :]
        sin = (emb.sin() * self.attention_scaling).to(dtype)[:, None, :]
        return cos, sin

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_ids: torch.Tensor,
        max_seqlen: int,
    ) -> torch.Tensor:
        """``input_ids [T]`` int, ``cu_seqlens [n+1]`` int32, ``position_ids [T]`` int ->
        last hidden states ``[T, hidden]`` in the model's dtype."""
        x = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        if self._attn_implementation == "triton":
            rope = (position_ids, self.inv_freq, self.attention_scaling)
        else:
            rope = self.rope(position_ids, x.dtype)
        dropout_p = self.attention_dropout if self.training else 0.0
        checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            args = (x, rope, cu_seqlens, max_seqlen, dropout_p)
            if checkpoint:
                x = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.norm(x)
