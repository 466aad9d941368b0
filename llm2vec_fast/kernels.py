"""Kernels of llm2vec-fast, each beside its PyTorch reference: the package ``llm2vec_fast.kernels``.

The public entry points are the custom ops of :mod:`llm2vec_fast.kernels.ops`, one
differentiable path per kernel: the Triton kernel for CUDA tensors (and for CPU tensors under
``TRITON_INTERPRET=1``), PyTorch code otherwise, so the library works, and is tested, without a
GPU. Each kernel module holds its ``@triton.jit`` kernels, launchers and ``<op>_ref``; the kernel
modules import only torch, triton and each other.

Why this file is a module and not ``kernels/__init__.py``: the kernel modules live in the
repository's top-level folder ``kernels/``, which has no ``__init__.py`` on purpose. A folder
without one is only a namespace portion, and Python's import system lets any regular package
of the same name found later on ``sys.path`` win over it, so running from the repository root
(where ``sys.path[0]`` is that root) can never make ``import kernels`` find our folder instead of
an installed distribution's ``kernels`` (Hugging Face's, which transformers imports). This
module makes itself the package by setting ``__path__`` to that folder: in an installed wheel
the modules sit beside it in ``llm2vec_fast/kernels/``; in a source checkout (editable install)
they are the repository's ``kernels/``. ``tests/test_import_shadowing.py`` guards both.
"""

from llm2vec_fast._layout import subpackage_path

__path__ = subpackage_path(__file__, "kernels")

# the differentiable entry points: the custom ops (torch.ops.llm2vec_fast.*), defined on import
from llm2vec_fast.kernels import ops  # noqa: E402
from llm2vec_fast.kernels._launch import use_triton  # noqa: E402
from llm2vec_fast.kernels.attention import varlen_attention_ref, varlen_attention_sdpa  # noqa: E402
from llm2vec_fast.kernels.cpu_linear import Linear  # noqa: E402
from llm2vec_fast.kernels.glu import gated_act_ref  # noqa: E402
from llm2vec_fast.kernels.latent_attention import latent_attention_ref  # noqa: E402
from llm2vec_fast.kernels.latent_ops import latent_attention  # noqa: E402
from llm2vec_fast.kernels.ops import (  # noqa: E402
    apply_rope,
    flash_varlen_attention,
    gated_act,
    rms_norm,
    segment_pool,
    varlen_attention,
)
from llm2vec_fast.kernels.pooling import POOLING_MODES, segment_pool_ref  # noqa: E402
from llm2vec_fast.kernels.rms_norm import rms_norm_ref  # noqa: E402
from llm2vec_fast.kernels.rope import rope_ref  # noqa: E402

__all__ = [
    "Linear",
    "POOLING_MODES",
    "apply_rope",
    "flash_varlen_attention",
    "gated_act",
    "gated_act_ref",
    "latent_attention",
    "latent_attention_ref",
    "ops",
    "rms_norm",
    "rms_norm_ref",
    "rope_ref",
    "segment_pool",
    "segment_pool_ref",
    "use_triton",
    "varlen_attention",
    "varlen_attention_ref",
    "varlen_attention_sdpa",
]
