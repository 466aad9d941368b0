"""The overlapped input pipeline (llm2vec_fast.pipeline): results in input order whatever the
chunking, streams read lazily in bounded memory, the stages really overlap, errors and early
exits stop the threads, out-of-memory splits."""

from __future__ import annotations

import itertools
import random
import threading

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from l2vf_support.memory import resident_memory_mb
from llm2vec_fast import LLM2Vec
from llm2vec_fast.chunks import CPU_TOKEN_BUDGET, split_batch
from llm2vec_fast.packing import pack_token_ids
from llm2vec_fast.pipeline import Chunk, EncodePipeline, chunked, default_token_budget

WORDS = "the cat sat on a mat while markets fell and oil rose in quiet rooms".split()


def random_texts(n: int, seed: int) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([0, 1, 2, 5, 13, 40, 90])
        text = " ".join(rng.choice(WORDS) for _ in range(k))
        out.append([rng.choice(WORDS), text] if rng.random() < 0.3 else text)
    return out


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    ckpt = tiny_checkpoint("llama", seed=11)
    return LLM2Vec.from_pretrained(ckpt, device="cpu", max_length=64)


def as_pairs(texts) -> list[tuple[str, str]]:
    return [("", t) if isinstance(t, str) else tuple(t) for t in texts]


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("llm2vec-fast-")]


def assert_no_threads_left() -> None:
    for t in pipeline_threads():
        t.join(timeout=10)
    assert not pipeline_threads()


def one_by_one(model, texts) -> torch.Tensor:
    return torch.stack([model.encode([t], show_progress_bar=False)[0] for t in texts])


@pytest.mark.parametrize("seed", [0, 1])
def test_many_chunks_give_each_text_its_own_embedding_in_input_order(model, seed, monkeypatch):
    texts = random_texts(37, seed)
    ref = one_by_one(model, texts)
    got = model.encode(texts, batch_size=3, chunk_size=5, show_progress_bar=False)
    assert_close(got, ref, atol=2e-5, rtol=1e-4)
    stats = model.last_encode_stats
    assert stats["overlap"] and stats["texts"] == 37 and stats["chunks"] >= 8
    monkeypatch.setenv("LLM2VEC_FAST_PIPELINE", "0")  # the sequential baseline agrees
    seq = model.encode(texts, batch_size=3, chunk_size=5, show_progress_bar=False)
    assert not model.last_encode_stats["overlap"]
    assert_close(seq, got, atol=2e-5, rtol=1e-4)
    assert_no_threads_left()


def test_generators_stream_and_equal_lists(model):
    texts = random_texts(29, 2)
    ref = model.encode(texts, batch_size=4, show_progress_bar=False)
    got = model.encode((t for t in texts), batch_size=4, chunk_size=6, show_progress_bar=False)
    assert_close(got, ref, atol=2e-5, rtol=1e-4)
    parts = list(model.encode_iter(iter(texts), batch_size=2, chunk_size=7))
    assert [len(p) for p in parts] == [4, 7, 7, 7, 4]  # 2 * batch_size, doubling to chunk_size
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float32 for p in parts)
    assert_close(torch.from_numpy(np.concatenate(parts)), ref, atol=2e-5, rtol=1e-4)
    normed = next(model.encode_iter(texts, normalize_embeddings=True, convert_to_tensor=True))
    nonzero = ref.norm(dim=1) > 0  # an empty text embeds to zeros here (no special tokens)
    assert_close(normed, torch.nn.functional.normalize(ref, dim=1), atol=2e-5, rtol=1e-4)
    assert_close(normed[nonzero].norm(dim=1), torch.ones(int(nonzero.sum())), atol=1e-5, rtol=0)
    tokens = model.encode(iter(texts[:5]), output_value="token_embeddings")
    ref_tokens = model.encode(texts[:5], output_value="token_embeddings")
    for a, b in zip(tokens, ref_tokens):
        assert_close(a, b, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="empty iterator"):
        model.encode(iter([]))
    with pytest.raises(ValueError, match="batch_size"):  # at the call, not at the first next()
        model.encode_iter(texts, batch_size=0)
    with pytest.raises(TypeError, match="sentence 1 is None"):
        model.encode_iter(["a", None])
    assert_no_threads_left()


def test_a_stream_is_read_a_few_chunks_ahead_only(model):
    pulled = [0]

    def endless():
        for i in itertools.count():
            pulled[0] += 1
            yield WORDS[i % len(WORDS)] * (1 + i % 5)

    chunk = 8
    it = model.encode_iter(endless(), batch_size=4, chunk_size=chunk)
    seen = 0
    for part in it:
        seen += len(part)
        # the chunk being read, one packed in the queue, one in the transfer thread, the one
        # handed out: never more than a handful of chunks beyond what came back
        assert pulled[0] - seen <= 5 * chunk
        if seen >= 100:
            break
    it.close()
    assert_no_threads_left()
    stop = pulled[0]
    assert stop - seen <= 5 * chunk  # nothing more is read after the loop ends


def test_tokenizing_the_next_chunk_overlaps_the_model(model):
    """While the model runs chunk 0, chunk 1 is tokenized on another thread: the model call of
    chunk 0 waits for that to happen (sequential stages would never get there)."""
    texts = random_texts(12, 3)
    chunk1_tokenized = threading.Event()
    real = model.text.token_arrays
    calls = [0]

    def spy(joined):
        calls[0] += 1
        if calls[0] == 2:
            chunk1_tokenized.set()
        return real(joined)

    seen_overlap = []

    def run_batch(on_device, batch):
        if not seen_overlap:
            seen_overlap.append(chunk1_tokenized.wait(timeout=20))
        return model.runner.run_model(on_device)

    model.text.token_arrays = spy
    try:
        pairs = as_pairs(texts)
        chunks = [Chunk(0, 0, pairs[:6]), Chunk(1, 6, pairs[6:])]
        pipe = EncodePipeline(
            model.text,
            model.runner,
            chunks,
            max_tokens_per_batch=64,
            batch_size=2,
            run_batch=run_batch,
        )
        results = list(pipe)
    finally:
        del model.text.token_arrays
    assert seen_overlap == [True]
    assert [r.chunk.index for r in results] == [0, 1]
    ref = model.encode(texts, show_progress_bar=False)
    assert_close(
        torch.from_numpy(np.concatenate([r.embeddings for r in results])), ref, atol=2e-5, rtol=1e-4
    )
    summary = pipe.summary()
    assert summary["tokenize_s"] > 0 and 0 <= summary["input_wait_fraction"] <= 1
    assert summary["tokens"] == sum(r.tokens for r in results)


def test_a_bad_item_in_a_stream_is_named_after_the_chunks_before_it(model):
    items = [f"text {i}" for i in range(13)] + [None] + ["never read"] * 3
    it = model.encode_iter(iter(items), batch_size=2, chunk_size=4)
    got = []
    with pytest.raises(TypeError, match="sentence 13 is None"):
        for part in it:
            got.append(part)
    assert sum(len(p) for p in got) == 12  # chunks of 4, 4, 4 came back; 13 has the bad item
    assert_no_threads_left()


def test_an_error_raised_by_the_stream_itself_propagates(model):
    def broken():
        yield "one"
        yield "two"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        model.encode(broken(), batch_size=1, chunk_size=1, show_progress_bar=False)
    assert_no_threads_left()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_in_the_model_stops_the_threads(model, exc):
    n = [0]

    def run_batch(on_device, batch):
        n[0] += 1
        if n[0] == 3:
            raise exc("stop here")
        return model.runner.run_model(on_device)

    chunks = chunked(((("", t) for t in itertools.repeat("a few words here"))), 4)
    pipe = EncodePipeline(
        model.text, model.runner, chunks, max_tokens_per_batch=16, batch_size=2, run_batch=run_batch
    )
    with pytest.raises(exc, match="stop here"):
        for _ in pipe:
            pass
    assert_no_threads_left()


def test_out_of_memory_splits_the_batch_and_reports_what_never_fits(model):
    limit = 50
    short = [t for t in random_texts(40, 4) if isinstance(t, str)]
    short = [t for t, n in zip(short, model.text.token_counts(short)) if n <= limit - 4]
    texts = short + ["word " * 60]  # the last one is over the limit alone (64 tokens)

    def run_batch(on_device, batch):
        if batch.n_tokens > limit:
            raise torch.OutOfMemoryError(f"simulated: {batch.n_tokens} tokens")
        return model.runner.run_model(on_device)

    pairs = as_pairs(texts)
    args = dict(max_tokens_per_batch=512, batch_size=64, run_batch=run_batch)
    pipe = EncodePipeline(model.text, model.runner, [Chunk(0, 0, pairs)], split_on_oom=True, **args)
    (res,) = list(pipe)
    ref = model.encode(texts, show_progress_bar=False).numpy()
    big = len(texts) - 1
    assert res.failed == [big] and np.isnan(res.embeddings[big]).all()
    np.testing.assert_allclose(res.embeddings[:big], ref[:big], atol=2e-5, rtol=1e-4)
    assert res.oom_splits >= 2
    with pytest.raises(torch.OutOfMemoryError):  # without split_on_oom the error propagates
        list(EncodePipeline(model.text, model.runner, [Chunk(0, 0, pairs)], **args))
    assert_no_threads_left()


@pytest.mark.parametrize("seed", range(4))
def test_split_batch_keeps_every_text_its_ids_and_pool_mask(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    rows = [rng.integers(0, 1000, size=int(rng.integers(0, 20))).tolist() for _ in range(n)]
    pool = [int(rng.integers(0, 25)) for _ in range(n)]
    (batch,) = pack_token_ids(rows, pool, max_length=0, max_tokens_per_batch=10**6)
    halves = split_batch(batch)
    assert len(halves) >= 2
    assert sorted(np.concatenate([h.indices for h in halves]).tolist()) == list(range(n))

    def per_text(b):
        cu = b.cu_seqlens.tolist()
        return {
            int(i): (b.input_ids[s:e].tolist(), b.pool_mask[s:e].tolist())
            for i, s, e in zip(b.indices, cu[:-1], cu[1:])
        }

    merged = {}
    for h in halves:
        assert h.n_tokens <= max(1, batch.n_tokens // 2) or h.n_texts == 1
        assert h.n_texts <= -(-batch.n_texts // 2)
        merged.update(per_text(h))
    assert merged == per_text(batch)


def test_repeated_calls_leak_neither_threads_nor_memory(model):
    """Many encode() calls, streams broken off early included: the pipeline's threads end with
    each call and the process's resident memory stays flat."""

    texts = random_texts(64, 5)

    def rounds(n):
        for _ in range(n):
            model.encode(texts, batch_size=4, chunk_size=16, show_progress_bar=False)
            it = model.encode_iter(iter(texts * 4), batch_size=4, chunk_size=8)
            next(it)
            it.close()

    rounds(10)  # warm-up: allocator pools, tokenizer caches, tqdm's monitor thread
    before_threads = threading.active_count()
    start = resident_memory_mb()
    rounds(40)
    assert_no_threads_left()
    assert threading.active_count() == before_threads
    assert resident_memory_mb() - start < 25, (
        f"resident memory grew {resident_memory_mb() - start:.1f} MB over 40 rounds"
    )


def test_default_token_budget_is_small_on_the_cpu_and_batch_times_length_elsewhere():
    assert default_token_budget("cuda:0", 32, 512) == 32 * 512
    assert default_token_budget(torch.device("cuda"), 4, 100) == 400
    assert default_token_budget("cpu", 32, 512) == min(32 * 512, CPU_TOKEN_BUDGET)
    assert default_token_budget("cpu", 2, 100) == 200  # batch_size * max_length is smaller
    # never under max_length: the longest text must fit in a batch alone
    assert default_token_budget("cpu", 32, 4 * CPU_TOKEN_BUDGET) == 4 * CPU_TOKEN_BUDGET
