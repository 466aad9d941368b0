"""A few STS rows, written where ``--data-dir`` looks for a local copy of MTEB's STSBenchmark."""

from __future__ import annotations

import json
from pathlib import Path

# (sentence1, sentence2, score 0-5)
STS_ROWS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "Someone is cutting an onion.", 4.2),
    ("A dog runs in the park.", "A cat sleeps on the sofa.", 0.6),
    ("The stock market fell today.", "Shares dropped sharply today.", 3.9),
    ("A child is reading a book.", "A plane lands at the airport.", 0.2),
    ("Two men are playing chess.", "Two people play a board game.", 3.5),
    ("It is raining in London.", "The weather in London is wet.", 3.8),
    ("She bought a new car.", "He is cooking pasta.", 0.4),
]


def write_sts_benchmark(data_dir: Path, rows=STS_ROWS) -> Path:
    """``rows`` as ``DATA_DIR/mteb/stsbenchmark-sts/test.jsonl`` (``--data-dir DIR/<repository
    id>``); returns the file."""
    repo = Path(data_dir) / "mteb" / "stsbenchmark-sts"
    repo.mkdir(parents=True)
    path = repo / "test.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for s1, s2, score in rows:
            f.write(json.dumps({"sentence1": s1, "sentence2": s2, "score": score}) + "\n")
    return path
