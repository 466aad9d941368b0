"""The training objectives: MNTP (masked next token prediction over packed sequences),
SimCSE and supervised contrastive training over pooled embeddings, and GradCache for large
contrastive batches."""

from __future__ import annotations

import dataclasses

import torch

from llm2vec_fast.packing import PackedBatch
from llm2vec_fast.training.data import (
    chunk_ids,
    iter_texts,
    iter_triples,
    mntp_mask,
    resolve_mask_token,
    special_token_ids,
)
from llm2vec_fast.training.losses import contrastive_loss, mntp_loss


class Objective:
    """Turns a list of data items into packed batches and a loss."""

    def __init__(self, enc, config, head=None, generator=None):
        self.enc, self.config, self.head, self.generator = enc, config, head, generator

    def items(self):
        return iter_texts(self.config.data, self.config.text_column)

    def forward(self, packed: PackedBatch) -> torch.Tensor:
        return self.enc.model(
            packed.input_ids, packed.cu_seqlens, packed.position_ids, packed.max_seqlen
        )

    def pooled(self, packed: PackedBatch) -> torch.Tensor:
        hidden = self.forward(packed)
        return self.enc.runner.pool(hidden, packed)

    def encode_texts(self, pairs: list[tuple[str, str]]) -> PackedBatch:
        """Pairs ``(instruction, text)`` -> a packed batch with the official joining, prompt
        wrapping and pooled spans (as ``LLM2Vec.encode``), truncated to max_seq_length."""
        ids, pool_lengths = self.enc.text.token_ids(self.enc.text.joined(pairs))
        return PackedBatch.in_order(ids, pool_lengths)


class MNTP(Objective):
    def __init__(self, enc, config, head, generator):
        super().__init__(enc, config, head, generator)
        tok = enc.tokenizer
        self.mask_id = resolve_mask_token(tok, config.mask_token)
        self.special = special_token_ids(tok)
        self.vocab = len(tok)

    def items(self):
        """Token-id sequences of at most max_seq_length: each text tokenized (with its special
        tokens) and cut into pieces, so a batch is ``batch_size`` sequences as in the official
        recipe (which concatenates the corpus and cuts it into max_seq_length blocks; here no
        block spans two texts)."""
        tok = self.enc.tokenizer
        for text in super().items():
            yield from chunk_ids(tok(text)["input_ids"], self.config.max_seq_length)

    def prepare(self, pieces: list[list[int]]) -> PackedBatch:
        packed = PackedBatch.in_order(pieces)
        inputs, labels = mntp_mask(
            packed.input_ids,
            self.special,
            probability=self.config.mlm_probability,
            mask_token_id=self.mask_id,
            vocab_size=self.vocab,
            all_mask=self.config.all_mask,
            generator=self.generator,
        )
        return dataclasses.replace(packed, input_ids=inputs, labels=labels)

    def loss(self, packed: PackedBatch) -> torch.Tensor:
        hidden = self.forward(packed)
        loss, _ = mntp_loss(hidden, self.head, packed.labels, packed.cu_seqlens)
        return loss


class Contrastive(Objective):
    """An objective over pooled embeddings: ``pairs(items)`` lists the (instruction, text)
    inputs of a batch, ``loss_from_reps`` scores their embeddings (so GradCache can run the
    same loss over embeddings computed chunk by chunk)."""

    def pairs(self, items) -> list[tuple[str, str]]:
        raise NotImplementedError

    def loss_from_reps(self, reps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, items) -> PackedBatch:
        return self.encode_texts(self.pairs(items))

    def loss(self, packed: PackedBatch) -> torch.Tensor:
        return self.loss_from_reps(self.pooled(packed))


class SimCSE(Contrastive):
    def pairs(self, texts: list[str]) -> list[tuple[str, str]]:
        # the batch twice in one packed forward: independent dropout masks for the two views
        return [("", t) for t in texts] * 2

    def loss_from_reps(self, reps: torch.Tensor) -> torch.Tensor:
        n = reps.shape[0] // 2
        return contrastive_loss(reps[:n], reps[n:], scale=self.config.loss_scale)


class Supervised(Contrastive):
    """Queries (with their instruction), then positives, then hard negatives. A batch uses as
    many hard negatives per query as its triple with the fewest has."""

    def items(self):
        return iter_triples(self.config.data)

    def pairs(self, triples) -> list[tuple[str, str]]:
        # official E5 data: the query is "instruction; " + separator + query
        queries = [(f"{t.instruction.strip()};" if t.instruction else "", t.query) for t in triples]
        k = min(len(t.negatives) for t in triples)
        self._n, self._k = len(triples), k
        pairs = queries + [("", t.positive) for t in triples]
        return pairs + [("", t.negatives[j]) for j in range(k) for t in triples]

    def loss_from_reps(self, reps: torch.Tensor) -> torch.Tensor:
        n, k = self._n, self._k
        q, d = reps[:n], reps[n : 2 * n]
        neg = reps[2 * n : (2 + k) * n] if k else None
        return contrastive_loss(q, d, neg, scale=self.config.loss_scale)


OBJECTIVE_CLASSES = {"mntp": MNTP, "simcse": SimCSE, "supervised": Supervised}


def gradcache_loss(objective, packed_pairs, chunk: int, backward) -> torch.Tensor:
    """GradCache (Gao et al., 2021): embed the batch without a graph in chunks of ``chunk``
    texts, take the loss and its gradient with respect to the embeddings, then re-run each
    chunk with a graph (same dropout, from the saved RNG state) and backpropagate that
    gradient. Memory is one chunk's activations; the gradient equals the full batch's."""
    pairs = packed_pairs
    chunks = [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]
    states, reps = [], []
    dev = objective.enc.runner.device
    for c in chunks:
        states.append(
            (torch.get_rng_state(), torch.cuda.get_rng_state() if dev.type == "cuda" else None)
        )
        with torch.no_grad():
            reps.append(objective.pooled(objective.encode_texts(c).to(dev, non_blocking=True)))
    all_reps = torch.cat(reps).detach().requires_grad_(True)
    loss = objective.loss_from_reps(all_reps)
    loss.backward()
    grads = all_reps.grad.split([r.shape[0] for r in reps])
    for c, (cpu_state, cuda_state), g in zip(chunks, states, grads):
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state)
        r = objective.pooled(objective.encode_texts(c).to(dev, non_blocking=True))
        backward((r * g.to(r.dtype)).sum())
    return loss.detach()


def count_tokens(objective, pairs) -> int:
    """The tokens of a batch of ``(instruction, text)`` pairs, as the model sees them."""
    ids, _ = objective.enc.text.token_ids(objective.enc.text.joined(pairs))
    return sum(len(x) for x in ids)
