"""What bench/make_golden_fixtures.py runs the official llm2vec on: the tiny checkpoints (and
the saved and published layouts built from them), the texts, and every run's settings and
cases (tests/test_golden.py reads the results, not this module)."""

from __future__ import annotations

MAX_LENGTH = 32
DOC_MAX_LENGTH = 20
BATCH_SIZE = 8
MODES = ("mean", "weighted_mean", "eos_token", "last_token")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# --------------------------------------------------------------------------- checkpoints
# kind "tiny": make_tiny_checkpoint(dir, family, seed=, name_or_path=, add_bos=, **overrides)
CHECKPOINTS: dict[str, dict] = {
    "llama": {"kind": "tiny", "family": "llama", "seed": 1101},
    "mistral": {"kind": "tiny", "family": "mistral", "seed": 2202},
    "qwen2": {"kind": "tiny", "family": "qwen2", "seed": 3303},
    "gemma": {"kind": "tiny", "family": "gemma", "seed": 4404},
    "mistral_bos": {"kind": "tiny", "family": "mistral", "seed": 5505, "add_bos": True},
    "llama2_chat": {
        "kind": "tiny",
        "family": "llama",
        "seed": 1101,
        "name_or_path": "meta-llama/Llama-2-7b-chat-hf",
    },
    "llama3_instruct": {
        "kind": "tiny",
        "family": "llama",
        "seed": 1101,
        "name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
    },
    "llama3_base": {
        "kind": "tiny",
        "family": "llama",
        "seed": 1101,
        "name_or_path": "meta-llama/Meta-Llama-3-8B",
    },
    "mistral_instruct": {
        "kind": "tiny",
        "family": "mistral",
        "seed": 2202,
        "name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
    },
    "gemma2_it": {
        "kind": "tiny",
        "family": "gemma",
        "seed": 4404,
        "name_or_path": "google/gemma-2-9b-it",
    },
    "qwen2_instruct": {
        "kind": "tiny",
        "family": "qwen2",
        "seed": 3303,
        "name_or_path": "Qwen/Qwen2-1.5B-Instruct",
    },
    # (e) a directory written by our LLM2Vec.save
    "saved": {
        "kind": "saved",
        "from": "llama2_chat",
        "load": {
            "pooling_mode": "weighted_mean",
            "max_length": MAX_LENGTH,
            "doc_max_length": DOC_MAX_LENGTH,
            "skip_instruction": False,
        },
    },
    # (f) the published layout: config.json + MNTP adapter (base named by path here, by a hub
    # id in the test), and a SimCSE-like adapter with llm2vec_config.json on top
    "published_base": {"kind": "tiny", "family": "llama", "seed": 6606},
    "published_mntp": {
        "kind": "mntp",
        "base": "published_base",
        "seed": 6607,
        "target_modules": LORA_TARGETS,
        "name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
    },
    "published_simcse": {
        "kind": "lora",
        "base": "published_base",
        "seed": 6608,
        "target_modules": LORA_TARGETS,
        "llm2vec_config": {
            "pooling_mode": "mean",
            "max_length": MAX_LENGTH,
            "doc_max_length": DOC_MAX_LENGTH,
            "skip_instruction": True,
        },
    },
}

TINY_FILES = (
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

# --------------------------------------------------------------------------- texts
# A list is either all strings or all [instruction, text] pairs: the official library decides
# the form from sentences[0] (mixing them is a deviation case of its own).
PLAIN = [
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday as oil prices rose.",
    "x",
    "  leading and trailing spaces  ",
]
PAIRS = [
    ["Retrieve a news article about markets", "Stocks fell sharply on Monday."],
    ["  Find the answer:  ", " a text with a leading space"],
    ["", "an empty instruction"],
    ["Classify the sentiment of the review", "I loved it!"],
]
LONG_INSTRUCTION = [
    ["Given a very long instruction that goes on and on " * 5, "short text"],
    ["Classify", "another short text"],
]
# the text fits doc_max_length (20) but instruction + text exceed max_length (32)
CUT_BY_MAX_LENGTH = [
    [
        "Given a question about the history and architecture of several old European cities, "
        "retrieve the relevant passages",
        "The old town of Prague has many bridges, towers and churches along the wide river",
    ],
    ["Summarise", "one two three four five six seven eight nine ten"],
]
# over doc_max_length (20) tokens alone: cut to fewer words (twice, for the first)
CUT_BY_DOC_MAX_LENGTH = [
    ["", " ".join(f"word{i}" for i in range(40))],
    ["Summarise the document", "alpha beta gamma delta " * 6],
]
UNICODE = [
    ["", "Café naïve — 東京タワー 🚀 über Straße"],  # over doc_max_length: cut by words
    ["Übersetze ins Deutsche:", "日本語のテキストです。"],
    ["", "naïve café 🚀 русский"],
]
# a plain text longer than max_length with no doc_max_length cut (doc_max_length 400)
LONG_PLAIN = ["many words here " * 30, "short"]


def standard_cases() -> list[dict]:
    return [
        {"name": "plain", "sentences": PLAIN},
        {"name": "pairs", "sentences": PAIRS},
        {"name": "long_instruction", "sentences": LONG_INSTRUCTION},
        {"name": "cut_by_max_length", "sentences": CUT_BY_MAX_LENGTH},
        {"name": "cut_by_doc_max_length", "sentences": CUT_BY_DOC_MAX_LENGTH},
        {"name": "unicode", "sentences": UNICODE},
    ]


def settings(mode, skip_instruction=True, max_length=MAX_LENGTH, doc_max_length=DOC_MAX_LENGTH):
    return {
        "pooling_mode": mode,
        "max_length": max_length,
        "doc_max_length": doc_max_length,
        "skip_instruction": skip_instruction,
        "enable_bidirectional": True,
    }


def runs() -> list[dict]:
    """Every official run: {fixture, id, checkpoint, peft, settings, ours, cases}. ``settings``
    are passed to the official from_pretrained (None: not passed); ``ours`` overrides what the
    test passes to ours; case ``expect``: "match" or the name of a deviation."""
    out: list[dict] = []

    def add(fixture, rid, checkpoint, sett, cases, ours=None, peft=None, note=None):
        run = {
            "fixture": fixture,
            "id": rid,
            "checkpoint": checkpoint,
            "peft": peft,
            "settings": sett,
            "ours": ours or {},
            "cases": [{"expect": "match", **c} for c in cases],
        }
        if note:
            run["note"] = note
        out.append(run)

    skip_false_mode = {
        "llama": "mean",
        "mistral": "weighted_mean",
        "qwen2": "mean",
        "gemma": "weighted_mean",
    }
    for fam in ("llama", "mistral", "qwen2", "gemma"):
        ours = {}
        note = None
        if fam == "qwen2":
            ours = {"enable_bidirectional": False}
            note = (
                "official Qwen2BiModel (transformers 4.44) is causal: compared with our "
                "enable_bidirectional=False; our default (bidirectional) differs on purpose"
            )
        for mode in MODES:
            cases = standard_cases()
            if mode in ("mean", "weighted_mean"):
                cases.append({"name": "empty_text_alone", "sentences": [["Represent this", ""]]})
            if mode == "weighted_mean":  # official: a zero vector, as ours
                cases.append(
                    {
                        "name": "empty_text_with_neighbour",
                        "sentences": [
                            ["Represent this", ""],
                            ["", "a much longer neighbour text " * 3],
                        ],
                    }
                )
            add(fam, f"{fam}/{mode}", fam, settings(mode), cases, ours, note=note)
        mode = skip_false_mode[fam]
        add(
            fam,
            f"{fam}/{mode}/with_instruction_pooled",
            fam,
            settings(mode, skip_instruction=False),
            standard_cases(),
            ours,
            note=note,
        )
        if fam in ("llama", "qwen2"):
            causal = settings("mean")
            causal["enable_bidirectional"] = False
            add(
                fam,
                f"{fam}/mean/causal",
                fam,
                causal,
                standard_cases(),
                {"enable_bidirectional": False},
            )
    add(
        "llama",
        "llama/mean/no_doc_cut",
        "llama",
        settings("mean", doc_max_length=400),
        [
            {"name": "cut_by_max_length_only", "sentences": LONG_PLAIN},
            {"name": "cut_by_max_length", "sentences": CUT_BY_MAX_LENGTH},
        ],
    )

    # add_bos tokenizer: bos_token pooling, and mean (the BOS is not in the pooled span)
    add("bos", "mistral_bos/bos_token", "mistral_bos", settings("bos_token"), standard_cases())
    add("bos", "mistral_bos/mean", "mistral_bos", settings("mean"), standard_cases())

    # prompt wrapping keyed on _name_or_path
    prompt_cases = [c for c in standard_cases() if c["name"] != "unicode"]
    for ckpt, mode in (
        ("llama2_chat", "mean"),
        ("llama2_chat", "eos_token"),
        ("llama3_instruct", "mean"),
        ("llama3_base", "eos_token"),
        ("mistral_instruct", "eos_token"),
        ("gemma2_it", "mean"),
        ("qwen2_instruct", "mean"),
    ):
        ours = {"enable_bidirectional": False} if ckpt.startswith("qwen2") else {}
        add("prompts", f"{ckpt}/{mode}", ckpt, settings(mode), prompt_cases, ours)

    # deliberate deviations (README "Differences, on purpose")
    dev = settings("mean")
    out.append(
        {
            "fixture": "deviations",
            "id": "llama/mean/deviations",
            "checkpoint": "llama",
            "peft": None,
            "settings": dev,
            "ours": {},
            "cases": [
                {"name": "bare_string", "expect": "bare_string", "sentences": "abc"},
                {
                    "name": "mixed_pair_then_plain",
                    "expect": "mixed_pair_then_plain",
                    "sentences": [["Instr", "alpha beta"], "gamma"],
                },
                {
                    "name": "empty_text_with_neighbour",
                    "expect": "empty_span_mean",
                    "sentences": [
                        ["Represent this", ""],
                        ["", "a much longer neighbour text " * 3],
                    ],
                },
                {
                    "name": "no_tokens_with_neighbour",
                    "expect": "no_tokens",
                    "sentences": ["", "a much longer neighbour text " * 3],
                },
            ],
        }
    )
    out.append(
        {
            "fixture": "deviations",
            "id": "llama/bos_token/no_bos",
            "checkpoint": "llama",
            "peft": None,
            "settings": settings("bos_token"),
            "ours": {},
            "cases": [{"name": "no_bos_token", "expect": "bos_none", "sentences": ["hello world"]}],
        }
    )

    # (e) our save() read by the official library (llm2vec_config.json decides the settings)
    add("save", "saved/llm2vec_config", "saved", {}, standard_cases())
    # (f) the published layout
    add(
        "published",
        "published/mntp+simcse",
        "published_mntp",
        {},
        standard_cases(),
        peft="published_simcse",
    )
    return out
