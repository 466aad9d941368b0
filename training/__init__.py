"""Training LLM2Vec encoders: masked next token prediction (MNTP), unsupervised SimCSE and
supervised contrastive training, on llm2vec-fast's packed encoder, LoRA through PEFT.

    from llm2vec_fast.training import TrainConfig, train
    train(TrainConfig("mntp", data="corpus.txt", output="out/mntp", max_steps=1000))
    train(TrainConfig("simcse", data="corpus.txt", output="out/simcse", peft=["out/mntp"]))

or ``llm2vec-fast train mntp|simcse|supervised --data ... --output ...``. The outputs are PEFT
adapter directories with ``llm2vec_config.json``, loaded by ``LLM2Vec.from_pretrained(base,
peft_model_name_or_path=[mntp_dir, simcse_dir])`` here and in the official library.
"""

from llm2vec_fast.training.data import DataError, mntp_mask, pack
from llm2vec_fast.training.losses import (
    contrastive_loss,
    cos_sim,
    linear_cross_entropy,
    mntp_loss,
)
from llm2vec_fast.training.trainer import OBJECTIVES, TrainConfig, build_model, train

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
    "pack",
    "train",
]
