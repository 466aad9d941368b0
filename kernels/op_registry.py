"""The custom-op registry helpers every op module shares (:mod:`.ops`, :mod:`.latent_ops`).

Each kernel is a pair of torch custom ops ``llm2vec_fast::<name>_forward`` / ``<name>_backward``
with one ``register_autograd`` on the forward op (:func:`define_pair`). Registration is
idempotent: ops already defined (a module imported under a second name) are reused.
"""

from __future__ import annotations

import torch

__all__ = ["NAMESPACE", "define_pair", "get_op", "is_registered"]

NAMESPACE = "llm2vec_fast"


def get_op(name: str):
    """``torch.ops.llm2vec_fast.<name>``."""
    return getattr(getattr(torch.ops, NAMESPACE), name)


def is_registered(name: str) -> bool:
    """Whether ``llm2vec_fast::<name>`` is already a torch op (defined by an earlier import)."""
    try:
        get_op(name)
    except (AttributeError, RuntimeError):
        return False
    return True


def define_pair(name, forward, forward_fake, backward, backward_fake, setup_context,
                autograd_bwd, forward_schema=None, backward_schema=None):  # fmt: skip
    """Define ``<name>_forward`` and ``<name>_backward`` with their fakes, and the one autograd
    registration (on the forward op): ``setup_context`` saves what the backward needs,
    ``autograd_bwd`` calls the backward op. Schemas come from the functions' annotations unless
    given. Nothing happens when the ops already exist."""
    if is_registered(f"{name}_forward"):
        return
    fwd = torch.library.custom_op(
        f"{NAMESPACE}::{name}_forward", forward, mutates_args=(), schema=forward_schema
    )
    fwd.register_fake(forward_fake)
    bwd = torch.library.custom_op(
        f"{NAMESPACE}::{name}_backward", backward, mutates_args=(), schema=backward_schema
    )
    bwd.register_fake(backward_fake)
    fwd.register_autograd(autograd_bwd, setup_context=setup_context)
