"""The batch job's settings (:class:`JobConfig`), its error type, and the model fingerprint a
resumed run is compared by."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm2vec_fast.io_formats import file_sha256
from llm2vec_fast.optional import require
from llm2vec_fast.options import model_kwargs
from llm2vec_fast.shard_files import OUTPUT_FORMATS, PRECISIONS, write_json_atomic


class JobError(ValueError):
    """A job that cannot start or continue (bad settings, an output directory it must not
    touch, a manifest that disagrees with this run)."""


@dataclass
class JobConfig:
    """Everything that defines a job's output. Two runs with equal configs (and the same model
    files and input) write the same shards."""

    model: str | None = None
    peft: list[str] = field(default_factory=list)
    base_weights: str | None = None
    pooling: str | None = None
    max_length: int | None = None
    doc_max_length: int | None = None
    dtype: str | None = None
    causal: bool = False
    normalize: bool = False
    precision: str = "float32"
    truncate_dim: int | None = None
    format: str = "npy"
    shard_size: int = 10_000
    batch_size: int = 32
    batch_tokens: int | None = None
    text_column: str = "text"
    id_column: str = "id"
    instruction_column: str = "instruction"
    attn_implementation: str = "auto"

    def check(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise JobError(
                f"unknown output format {self.format!r}; use {', '.join(OUTPUT_FORMATS)}"
            )
        if self.precision not in PRECISIONS:
            raise JobError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.format == "parquet":  # here, not after the first shard is embedded
            require("pyarrow", feature="writing Parquet shards (--format parquet)")
        for name in ("shard_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise JobError(f"{name} must be a positive integer; got {v!r}")
        for name in ("batch_tokens", "truncate_dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise JobError(f"{name} must be a positive integer; got {v!r}")
        if self.model is not None and not Path(self.model).exists():
            raise JobError(f"model path {self.model} does not exist")
        for p in self.peft:
            if not Path(p).is_dir():
                raise JobError(f"adapter directory {p} does not exist")

    def output_settings(self) -> dict:
        """The settings a resumed run must share (paths excluded: the model is compared by
        its fingerprint, so a moved checkpoint still resumes)."""
        d = asdict(self)
        for k in ("model", "peft", "base_weights"):
            d.pop(k)
        return d

    def load_kwargs(self, device: str | None) -> dict:
        """``LLM2Vec.from_pretrained``'s arguments for this job's model on ``device``."""
        return model_kwargs(self, device)


def cached_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered in the cache directory under (absolute path, size,
    modification time), so a large checkpoint is hashed once, not at every run."""
    from llm2vec_fast.loading import cache_dir

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "sha256-cache.json"
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        known = {}
    if key not in known:
        known[key] = file_sha256(path)
        with contextlib.suppress(OSError):
            store.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(store, known)
    return known[key]


def model_fingerprint(config: JobConfig) -> dict:
    """SHA-256 of every weight, config and tokenizer file of the base checkpoint (``.gguf``,
    ``.safetensors``, ``.json``, ``tokenizer.model``), of each adapter and of the base weights
    for a published layout; file names map to hashes. Large files are hashed once (see
    :func:`cached_sha256`)."""

    def files_of(base: Path) -> dict:
        paths = sorted(base.iterdir()) if base.is_dir() else [base]
        return {
            p.name: cached_sha256(p)
            for p in paths
            if p.is_file()
            and (p.suffix in (".json", ".safetensors", ".gguf") or p.name == "tokenizer.model")
        }

    if config.model is None:
        from llm2vec_fast.default_model import DEFAULT_MODEL_NAME, default_gguf_path

        base = {"default": DEFAULT_MODEL_NAME, "files": files_of(default_gguf_path())}
    else:
        base = {"files": files_of(Path(config.model))}
    return {
        "base": base,
        "adapters": [files_of(Path(a)) for a in config.peft],
        "base_weights": files_of(Path(config.base_weights)) if config.base_weights else {},
    }
