"""Training (MNTP, SimCSE, supervised contrastive) on llm2vec-fast's encoder.

Installed as ``llm2vec_fast.training``. Nothing is implemented here yet: the training recipes
are a later issue. The command line imports this package only inside its ``train`` subcommand.
"""
