"""Helpers of llm2vec-fast's own tests and benchmarks (not shipped in the wheel).

``tests/conftest.py`` puts ``tests/`` on ``sys.path`` (at its end, so nothing here can stand in
for an installed package); bench/ scripts do the same before importing from here. The name is
distinctive on purpose: ``tests`` or ``support`` could be a module of an installed distribution.

- :mod:`.checkpoints`: a random LoRA adapter, the published LLM2Vec layout, tensor hashes.
- :mod:`.mistral`: Mistral-7B's real tokenizer (needs ``mistral-common``'s file).
- :mod:`.tokenizer_variants`: tokenizer.json variants of every supported component, HF parity.
- :mod:`.official`: the official llm2vec 0.2.3 logic written out plainly, as references.
- :mod:`.numerics`: judging low-precision kernel results; :mod:`.memory`: resident memory.
- :mod:`.sts`: the STS rows shared by the README and MTEB tests; :mod:`.training_data`: the
  training tests' tiny run; :mod:`.nv_embed`: NV-Embed's latent attention layer transcribed.
- :mod:`.packed`: packed batches and per-text reference attention; :mod:`.gpu`: the CUDA kernel
  tests' marks and cases; :mod:`.sm90`: the ahead-of-time sm_90 compile tests' pieces.
"""
