"""The attention implementations bench_kernels.py times against ours on one packed batch:
torch SDPA on the padded batch (cuDNN, flash, memory-efficient with a padding mask), SDPA per
text, and compiled FlexAttention with a document mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_index(lengths, device):
    """(batch index, position index) of each packed token in the padded [B, L] layout."""
    b = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.cat([torch.arange(n) for n in lengths])
    return b.to(device), pos.to(device)


def attention_variants(q, k, v, lengths, cu, max_len, no_flex: bool):
    """{name: callable(q, k, v) -> output} over the packed inputs, and notes of skipped ones."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from llm2vec_fast.kernels import flash_varlen_attention, varlen_attention_sdpa

    hq, hkv = q.shape[1], k.shape[1]
    groups = hq // hkv
    variants, skipped = {}, {}
    variants["ours-triton"] = lambda q, k, v: flash_varlen_attention(q, k, v, cu, max_len)
    variants["sdpa-per-text"] = lambda q, k, v: varlen_attention_sdpa(q, k, v, cu, max_len)

    # padded layout [B, L, H, D] -> SDPA view [B, H, L, D], as HF models lay it out
    bi, pi = pad_index(lengths, q.device)
    n = len(lengths)

    def pad(x):
        out = x.new_zeros(n, max_len, x.shape[1], x.shape[2])
        out[bi, pi] = x.detach()
        return out.transpose(1, 2).requires_grad_(x.requires_grad)

    padded = {}

    def padded_inputs(q, k, v, expand: bool = False):
        """Padded leaves (q, k, v) made once per input set (the copies are not timed); with
        ``expand`` k/v carry Hq heads (for backends that refuse ``enable_gqa``)."""
        key = (q.data_ptr(), q.requires_grad, expand)
        if key not in padded:
            if expand:
                k, v = (
                    x.detach().repeat_interleave(groups, 1).requires_grad_(x.requires_grad)
                    for x in (k, v)
                )
            padded[key] = (pad(q), pad(k), pad(v))
        return padded[key]

    key_ok = torch.zeros(n, max_len, dtype=torch.bool, device=q.device)
    key_ok[bi, pi] = True
    mask = key_ok[:, None, None, :]

    def sdpa(backend, with_mask, expand):
        def run(q, k, v):
            qp, kp, vp = padded_inputs(q, k, v, expand)
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    qp, kp, vp, attn_mask=mask if with_mask else None,
                    enable_gqa=groups > 1 and not expand,
                )  # fmt: skip

        run.expand = expand
        return run

    for name, backend, with_mask in (
        ("sdpa-padded-cudnn", SDPBackend.CUDNN_ATTENTION, False),
        ("sdpa-padded-flash", SDPBackend.FLASH_ATTENTION, False),
        ("sdpa-padded-efficient-mask", SDPBackend.EFFICIENT_ATTENTION, True),
    ):
        errors = []
        for expand in (False, True) if groups > 1 else (False,):
            fn = sdpa(backend, with_mask, expand)
            try:  # a backend that refuses these inputs (GQA, head dim, build) is skipped
                fn(q, k, v)
                torch.cuda.synchronize()
                variants[name + ("-kv-expanded" if expand else "")] = fn
                break
            except RuntimeError as e:
                errors.append(str(e).splitlines()[0][:160])
        else:
            skipped[name] = " / ".join(errors)

    if no_flex:
        skipped["flex-document-mask"] = "--no-flex"
        return variants, skipped, padded_inputs
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        doc = torch.repeat_interleave(
            torch.arange(n, device=q.device), torch.tensor(lengths, device=q.device)
        )
        total = q.shape[0]

        def document(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]

        block_mask = create_block_mask(document, None, None, total, total, device=q.device)
        flex = torch.compile(flex_attention, dynamic=False)

        def run_flex(q, k, v):
            o = flex(
                q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                block_mask=block_mask, enable_gqa=groups > 1,
            )  # fmt: skip
            return o[0].transpose(0, 1)

        run_flex(q, k, v)
        torch.cuda.synchronize()
        variants["flex-document-mask"] = run_flex
    except Exception as e:  # noqa: BLE001 - missing module, inductor failure: report and go on
        skipped["flex-document-mask"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return variants, skipped, padded_inputs


def latent_variants(q, k, v):
    """{name: callable(q, k, v) -> [T, H, D]} of the latent attention (every token against the
    same R latents, q ``[T, H, D]``, k/v ``[R, H, D]``): ours, the unfused PyTorch path (the
    ``[H, T, R]`` scores in memory) and torch SDPA over ``[1, H, T | R, D]`` (the head's torch
    path)."""
    from llm2vec_fast.kernels import latent_attention

    def unfused(q, k, v):
        s = q.transpose(0, 1) @ k.permute(1, 2, 0) * q.shape[-1] ** -0.5  # [H, T, R]
        return (torch.softmax(s, dim=-1) @ v.transpose(0, 1)).transpose(0, 1)

    def sdpa(q, k, v):
        q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k, v))
        return F.scaled_dot_product_attention(q4, k4, v4)[0].transpose(0, 1)

    return {"ours-triton": latent_attention, "torch-unfused": unfused, "sdpa": sdpa}
