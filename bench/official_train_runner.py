#!/usr/bin/env python
"""The official llm2vec training recipe, rebuilt from its own classes, timed step by step.

Runs INSIDE the official environment (bench/.venv-official: llm2vec 0.2.3, transformers
4.44.2, peft 0.12.0; made by bench/setup_official_env.sh) and imports nothing from
llm2vec_fast. bench/bench_training.py starts it once per configuration:

    python bench/official_train_runner.py JOB.json

The official training scripts (experiments/run_mntp.py, run_simcse.py in McGill-NLP/llm2vec)
are not in the PyPI package and load hub datasets, so their training step is rebuilt here from
the package's classes, with local files:

MNTP (run_mntp.py): ``LlamaBiForMNTP`` (the family's ``*BiForMNTP``) loaded in the job's dtype
with ``attn_implementation``; LoRA (r 16, alpha 32, dropout 0.05, the 7 projections, bias
none) applied by ``get_peft_model`` to ``model.model`` as run_mntp does (so an untied
``lm_head`` stays trainable, as there); mask token ``"_"`` when the tokenizer has none, pad =
eos; every text tokenized with ``return_special_tokens_mask=True``, then ``group_texts``:
concatenated and cut into blocks of ``max_seq_length`` (the remainder dropped);
``DataCollatorForLanguageModeling(mlm_probability=0.2)``; the model's own loss
(``LlamaForCausalLM.forward``: full-vocabulary float32 logits, shifted cross-entropy).

SimCSE (run_simcse.py): ``LLM2Vec.from_pretrained(model, enable_bidirectional=True,
merge_peft=True, pooling_mode="mean", max_length=max_seq_length, torch_dtype=...,
attn_implementation=..., attention_dropout=0.3)``; the same LoRA on ``l2v.model``; run_simcse's
``DefaultCollator`` (each of the two views through ``l2v.tokenize``: padded to the batch's
longest, left padding, truncation at max_length); two forward passes, ``HardNegativeNLLLoss``
(scale 20).

The step, as HF ``Trainer`` runs it with the scripts' settings: the collator inside the step
(dataloader workers 0), ``model.train()``, forward (under ``torch.autocast(bfloat16)`` only in
the ``amp`` precision, as ``Trainer(bf16=True)``), ``loss.backward()``,
``clip_grad_norm_(model.parameters(), 1.0)``, ``torch.optim.AdamW`` (weight decay 0, lr 5e-5
MNTP / 3e-5 SimCSE), a linear schedule without warmup, ``zero_grad(set_to_none=True)``.
Gradient checkpointing as ``Trainer`` enables it (``gradient_checkpointing_enable`` with
``use_reentrant=False``, as the scripts set).

Precision: ``fp32`` float32 weights; ``bf16`` the weights loaded in bfloat16 and trained in it
without autocast, as the official train_configs do (``torch_dtype: bfloat16``, no ``bf16``
flag; peft 0.12 keeps the LoRA weights in float32); ``amp`` float32 weights under bf16
autocast (``Trainer(bf16=True)``).

Data order: the texts in file order (the caller shuffles the file), batch k = items
[k*B, (k+1)*B), cycling. Tokens counted: non-padding tokens fed to the model
(``attention_mask`` sums; SimCSE: both passes).

Timing and memory (:class:`StepMeter`, shared with the llm2vec-fast side): a step ends when
``zero_grad`` returns; the timed window runs from the end of step ``warmup`` to the end of step
``warmup + steps``. CUDA: ``max_memory_allocated`` over the timed steps (reset at the window's
start). CPU: one more step under ``torch.profiler(profile_memory=True)``: the peak of the
bytes the CPU allocator handed out during that step above what was live at its start (the
step's working set: activations, logits, gradients, optimizer temporaries), plus the bytes of
every tensor alive at its start (weights, LoRA, optimizer state; found with ``gc``); their
sum estimates the peak of torch's CPU tensor memory (the CPU analogue of
``max_memory_allocated``). ``ru_maxrss`` (the whole process, model loading included) is also
recorded.

Output: the job's ``out`` JSON.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time

import torch

LORA_MODULES = ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------- measuring
# Plain torch, no llm2vec: bench/bench_training.py imports this class for the llm2vec-fast side.


def live_tensor_bytes(device_type: str) -> int:
    """Bytes of the distinct storages of every tensor the garbage collector can see on
    ``device_type`` (parameters, buffers, optimizer state, caches held from Python)."""
    import warnings

    seen, total = set(), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated module attributes touched by isinstance
        for obj in gc.get_objects():
            try:
                if not isinstance(obj, torch.Tensor) or obj.device.type != device_type:
                    continue
                st = obj.untyped_storage()
                key = st.data_ptr()
                if key in seen or key == 0:
                    continue
                seen.add(key)
                total += st.nbytes()
            except Exception:  # noqa: BLE001 - meta, sparse or otherwise odd tensors
                continue
    return total


def _profiled_peak(prof) -> int:
    """The highest running total of CPU allocator bytes during a profile_memory run (blocks
    allocated before it started are not counted, nor their frees)."""
    from torch._C._profiler import _EventType

    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    events = []
    while stack:
        n = stack.pop()
        stack.extend(n.children)
        if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu":
            events.append((n.start_time_ns, n.extra_fields.total_allocated))
    for _, total in sorted(events):
        peak = max(peak, total)
    return peak


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StepMeter:
    """Step boundaries (call :meth:`boundary` when a step's ``zero_grad`` has returned), the
    timed window, and the memory measurements described in the module docstring."""

    def __init__(self, device: str, warmup: int, steps: int, memory_step: bool):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup, self.steps = warmup, steps
        self.memory_step = memory_step and not self.cuda
        self.times: list[float] = []
        self.memory: dict = {}
        self._prof = None

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps + (1 if self.memory_step else 0)

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def boundary(self) -> None:
        self._sync()
        self.times.append(time.perf_counter())
        done = len(self.times)
        if done == self.warmup and self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if done == self.warmup + self.steps:
            if self.cuda:
                self.memory["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(
                    self.device
                )
                self.memory["method"] = "torch.cuda.max_memory_allocated over the timed steps"
            if self.memory_step:
                gc.collect()
                self.memory["live_before_step_bytes"] = live_tensor_bytes(self.device.type)
                self.memory["rss_before_step_bytes"] = rss_bytes()
                self._prof = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
                )
                self._prof.__enter__()
        if done == self.warmup + self.steps + 1 and self._prof is not None:
            self._prof.__exit__(None, None, None)
            step_peak = _profiled_peak(self._prof)
            self._prof = None
            self.memory["step_peak_above_live_bytes"] = step_peak
            self.memory["peak_estimate_bytes"] = step_peak + self.memory["live_before_step_bytes"]
            self.memory["method"] = (
                "CPU: live tensors at the step's start (gc) + the step's allocator peak above "
                "them (torch.profiler profile_memory, one extra untimed step)"
            )

    def result(self, step_tokens: list[int]) -> dict:
        w, s = self.warmup, self.steps
        if len(self.times) < w + s or w < 1:
            raise RuntimeError(f"only {len(self.times)} step boundaries for {w} + {s} steps")
        seconds = self.times[w + s - 1] - self.times[w - 1]
        tokens = sum(step_tokens[w : w + s])
        per_step = sorted(
            step_tokens[w + j] / (self.times[w + j] - self.times[w + j - 1]) for j in range(s)
        )
        median = (per_step[(s - 1) // 2] + per_step[s // 2]) / 2
        mem = dict(self.memory)
        mem["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "step_seconds": [b - a for a, b in zip(self.times, self.times[1:])],
            "step_tokens": list(step_tokens),
            "timed": {
                "steps": s,
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "median_step_tokens_per_s": median,
            },
            "memory": mem,
        }


# ---------------------------------------------------------------------------------- official


def _dtype(name: str):
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "amp": torch.float32}[name]


def _lora(model, job):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=LORA_MODULES,
        lora_dropout=0.05,
        bias="none",
        task_type=None,
    )
    return get_peft_model(model, config)


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _mntp(job, device):
    from llm2vec.models import GemmaBiForMNTP, LlamaBiForMNTP, MistralBiForMNTP, Qwen2BiForMNTP
    from transformers import AutoConfig, AutoTokenizer, DataCollatorForLanguageModeling

    classes = {
        "MistralConfig": MistralBiForMNTP,
        "LlamaConfig": LlamaBiForMNTP,
        "GemmaConfig": GemmaBiForMNTP,
        "Qwen2Config": Qwen2BiForMNTP,
    }
    L = int(job["max_seq_length"])
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    if tokenizer.mask_token is None:
        tokenizer.mask_token = "_"  # mask_token_type "blank"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(job["model"])
    model = classes[type(config).__name__].from_pretrained(
        job["model"],
        config=config,
        torch_dtype=_dtype(job["precision"]),
        attn_implementation=job["attn_implementation"],
    )
    model.model = _lora(model.model, job)
    model.to(device)

    # tokenize_function + group_texts (run_mntp, not line_by_line)
    enc = tokenizer(_read_lines(job["data"]), return_special_tokens_mask=True)
    blocks = []
    cat = {k: [t for seq in enc[k] for t in seq] for k in enc.keys()}
    total = len(cat["input_ids"]) // L * L
    for i in range(0, total, L):
        blocks.append({k: v[i : i + L] for k, v in cat.items()})
    if not blocks:
        raise SystemExit(f"MNTP: the data holds fewer than {L} tokens")
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.2)

    def batch(k):
        B = int(job["batch_size"])
        items = [blocks[(k * B + j) % len(blocks)] for j in range(B)]
        feats = collator(items)
        n = int(feats["attention_mask"].sum())
        padded = int(feats["attention_mask"].numel())
        return feats, n, padded

    def loss_fn(feats):
        feats = {k: v.to(device) for k, v in feats.items()}
        return model(**feats)["loss"]

    info = {
        "blocks": len(blocks),
        "mask_token": tokenizer.mask_token,
        "mask_token_id": tokenizer.mask_token_id,
        "lm_head_trainable": bool(model.lm_head.weight.requires_grad),
    }
    return model, model, batch, loss_fn, 5e-5, info


class _DefaultCollator:
    """run_simcse.py's DefaultCollator (not in the PyPI package), verbatim in effect."""

    def __init__(self, model):
        self.model = model

    def __call__(self, features):
        num_texts = len(features[0].texts)
        texts = [[] for _ in range(num_texts)]
        labels = []
        for example in features:
            for idx, text in enumerate(example.texts):
                texts[idx].append(text)
            labels.append(example.label)
        labels = torch.tensor(labels)
        sentence_features = [self.model.tokenize(texts[idx]) for idx in range(num_texts)]
        return sentence_features, labels


def _simcse(job, device):
    from llm2vec import LLM2Vec
    from llm2vec.dataset.dataset import TrainSample
    from llm2vec.loss.utils import load_loss

    l2v = LLM2Vec.from_pretrained(
        base_model_name_or_path=job["model"],
        enable_bidirectional=True,
        peft_model_name_or_path=None,
        merge_peft=True,
        pooling_mode="mean",
        max_length=int(job["max_seq_length"]),
        torch_dtype=_dtype(job["precision"]),
        attn_implementation=job["attn_implementation"],
        attention_dropout=0.3,
    )
    l2v.model = _lora(l2v.model, job)
    l2v.to(device)
    # Wiki1M: each line is both the query and the positive
    samples = [TrainSample(texts=[t, t], label=1.0) for t in _read_lines(job["data"])]
    collator = _DefaultCollator(l2v)
    loss_obj = load_loss("HardNegativeNLLLoss", scale=20.0)

    def batch(k):
        B = int(job["batch_size"])
        items = [samples[(k * B + j) % len(samples)] for j in range(B)]
        feats, labels = collator(items)
        n = sum(int(f["attention_mask"].sum()) for f in feats)
        padded = sum(int(f["attention_mask"].numel()) for f in feats)
        return feats, n, padded

    def loss_fn(feats):
        feats = [{k: v.to(device) for k, v in f.items()} for f in feats]
        q_reps = l2v(feats[0])
        d_reps = l2v(feats[1])
        return loss_obj(q_reps, d_reps, None)

    return l2v, l2v, batch, loss_fn, 3e-5, {"samples": len(samples)}


def run(job: dict) -> dict:
    import contextlib

    from transformers import get_scheduler

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(int(job.get("seed", 42)))
    device = torch.device(job["device"])
    t_load = time.perf_counter()
    build = {"mntp": _mntp, "simcse": _simcse}[job["objective"]]
    model, gc_owner, batch, loss_fn, lr, info = build(job, device)
    load_seconds = time.perf_counter() - t_load
    if job.get("gradient_checkpointing"):
        gc_owner.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    meter = StepMeter(job["device"], int(job["warmup_steps"]), int(job["steps"]), True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=0, num_training_steps=meter.total_steps
    )
    amp = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if job["precision"] == "amp"
        else contextlib.nullcontext()
    )
    model.train()
    step_tokens, step_padded, losses = [], [], []
    for k in range(meter.total_steps):
        feats, n, padded = batch(k)
        with amp:
            loss = loss_fn(feats)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        model.zero_grad(set_to_none=True)
        meter.boundary()
        step_tokens.append(n)
        step_padded.append(padded)
        losses.append(float(loss.detach()))
    res = meter.result(step_tokens)
    res["step_padded_tokens"] = step_padded
    res["losses"] = losses
    res["load_seconds"] = load_seconds
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    weights = [p for n, p in model.named_parameters() if "lora_" not in n]
    res["setup"] = {
        **info,
        "weights_dtype": str(weights[0].dtype) if weights else None,
        "lora_dtype": str(lora[0].dtype) if lora else None,
        "autocast": "bfloat16" if job["precision"] == "amp" else None,
        "trainable_parameters": sum(p.numel() for p in params),
        "attn_implementation": job["attn_implementation"],
        "gradient_checkpointing": bool(job.get("gradient_checkpointing")),
        "learning_rate": lr,
        "threads": torch.get_num_threads(),
    }
    res["versions"] = _versions()
    return res


def _versions():
    import importlib.metadata as md

    out = {}
    for pkg in ("llm2vec", "transformers", "tokenizers", "torch", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: official_train_runner.py JOB.json")
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    res = {"side": "official", **{k: job[k] for k in ("objective", "precision")}, **run(job)}
    with open(job["out"], "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
