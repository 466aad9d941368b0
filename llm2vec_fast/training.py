"""Training LLM2Vec encoders: masked next token prediction (MNTP), unsupervised SimCSE and
supervised contrastive training, on llm2vec-fast's packed encoder, LoRA through PEFT.

    from llm2vec_fast.training import TrainConfig, train
    train(TrainConfig("mntp", data="corpus.txt", output="out/mntp", max_steps=1000))
    train(TrainConfig("simcse", data="corpus.txt", output="out/simcse", peft=["out/mntp"]))

or ``llm2vec-fast train mntp|simcse|supervised --data ... --output ...``. The outputs are PEFT
adapter directories with ``llm2vec_config.json``, loaded by ``LLM2Vec.from_pretrained(base,
peft_model_name_or_path=[mntp_dir, simcse_dir])`` here and in the official library.

The modules live in the repository's top-level folder ``training/``, which has no
``__init__.py`` so that it can never stand in for an installed package named ``training``; this
module makes itself the package by pointing ``__path__`` at that folder (as
:mod:`llm2vec_fast.kernels` does, which says why).
"""

from llm2vec_fast._layout import subpackage_path

__path__ = subpackage_path(__file__, "training")


from llm2vec_fast.training.data import DataError, mntp_mask  # noqa: E402
from llm2vec_fast.training.losses import (  # noqa: E402
    contrastive_loss,
    cos_sim,
    linear_cross_entropy,
    mntp_loss,
)
from llm2vec_fast.training.trainer import OBJECTIVES, TrainConfig, build_model, train  # noqa: E402

__all__ = [
    "OBJECTIVES",
    "DataError",
    "TrainConfig",
    "build_model",
    "contrastive_loss",
    "cos_sim",
    "linear_cross_entropy",
    "mntp_loss",
    "mntp_mask",
    "train",
]
