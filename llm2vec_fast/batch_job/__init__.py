"""The batch embedding job: a corpus in, a directory of resumable embedding shards out.

``llm2vec-fast embed INPUT -o OUTDIR`` and :func:`run_job` stream the corpus (see
:mod:`llm2vec_fast.io_formats` for the input formats, :mod:`llm2vec_fast.shard_files` for the
shard formats), cut it into shards of ``shard_size`` consecutive rows, and embed shard after
shard. The shard is the unit of sorting and packing (a batch never spans two shards), so a shard's bytes depend only on its rows, the
settings and the device. Each shard's files are written under temporary names and renamed when
complete; then ``manifest.json`` (rewritten atomically) records the shard: its row range, file
checksums, device, errors and any out-of-memory splits. The manifest is the truth: a shard file
it does not list is recomputed.

Rerunning the same command after a crash (``kill -9`` at any moment) or a Ctrl-C continues after
the last recorded shard; the output is then byte-identical to an uninterrupted run on the same
device with the same thread count. A rerun with different settings, a different model or adapter,
or a changed input refuses with the list of differences instead of mixing shards.

Rows that cannot be embedded (not a string, empty or blank, invalid unicode, a broken JSON line,
a text that does not fit in memory even alone) go to ``errors.jsonl`` (row, id, reason) and the
job goes on; the shard files hold only the embedded rows, with their ids. Rows embedded although
no token of their text is pooled (it tokenizes to nothing, or nothing of it fits in
``doc_max_length`` tokens: the vector does not depend on the text) are kept and listed in
``warnings.jsonl`` (row, id, reason; the shards' ``warnings`` in the manifest).

Several devices (``devices=["cuda:0", "cuda:1"]`` or ``"all"``): one worker process per device
loads the model itself and embeds disjoint shards; the parent reads the input, hands out shards
(a bounded queue) and alone writes the manifest.

The package: :mod:`.config` (the settings and the model fingerprint), :mod:`.manifest` (the
output directory and its manifest), :mod:`.shards` (a shard's rows to its files), :mod:`.run`
(:func:`run_job` and its worker processes), :mod:`.read` (:func:`read_embeddings`).
"""

from llm2vec_fast.batch_job.config import JobConfig, JobError, cached_sha256, model_fingerprint
from llm2vec_fast.batch_job.manifest import (
    ERRORS,
    MANIFEST,
    MANIFEST_FORMAT,
    WARNINGS,
    Job,
    open_job,
    read_manifest,
)
from llm2vec_fast.batch_job.read import read_embeddings
from llm2vec_fast.batch_job.run import resolve_devices, run_job
from llm2vec_fast.batch_job.shards import (
    EMPTY_POOLED,
    ShardEmbedder,
    iter_shards,
    validate_record,
)

__all__ = [
    "EMPTY_POOLED",
    "ERRORS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "WARNINGS",
    "Job",
    "JobConfig",
    "JobError",
    "ShardEmbedder",
    "cached_sha256",
    "iter_shards",
    "model_fingerprint",
    "open_job",
    "read_embeddings",
    "read_manifest",
    "resolve_devices",
    "run_job",
    "validate_record",
]
