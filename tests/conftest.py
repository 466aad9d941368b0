"""Shared pytest configuration: the test helpers' package on the path, the versions printed at
the start of every run, the ``gpu`` marker's skip, and the tiny-checkpoint fixture."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import pytest

# tests/l2vf_support (the helpers of the tests and bench/ scripts) becomes importable. Appended,
# not prepended: nothing under tests/ can then stand in for an installed package.
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.append(TESTS)

# printed at the start of every run (CI included), so a failing run names what pip resolved
REPORTED_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "safetensors",
    "triton",
    "numpy",
    "accelerate",
    "kernels",
)


def _environment_lines() -> list[str]:
    versions = []
    for name in REPORTED_DISTRIBUTIONS:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    cpu = platform.processor() or platform.machine()
    try:  # the model name, and the vector extensions it does not say ("AMD EPYC" is both kinds)
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines())
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = set(info.get("flags", "").split())
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
        cpu = (
            f"{info['model name']} (family {info.get('cpu family')}, {', '.join(isa) or 'no AVX2'})"
        )
    except (OSError, KeyError, ValueError):
        pass
    return ["versions: " + ", ".join(versions), f"cpu: {cpu}"]


def pytest_sessionstart(session) -> None:
    # written even under -q, which hides pytest's own header
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in _environment_lines():
            reporter.write_line(line)


def pytest_collection_modifyitems(config, items) -> None:
    """The ``gpu`` marker's promise (pyproject.toml): its tests are skipped without CUDA."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(family, seed=0, **kw)``: the directory that
    ``llm2vec_fast.testing.make_tiny_checkpoint(dir, family, seed=seed, **kw)`` writes, made
    once per session for each set of arguments and shared by every test that asks for it: read
    it, never write into it (a test that changes a checkpoint makes its own)."""
    from llm2vec_fast.testing import make_tiny_checkpoint

    made: dict[str, Path] = {}

    def get(family: str, seed: int = 0, **kw) -> Path:
        key = json.dumps([family, seed, kw], sort_keys=True)
        if key not in made:
            root = tmp_path_factory.mktemp(f"tiny-{family}-{seed}")
            made[key] = make_tiny_checkpoint(root / family, family, seed=seed, **kw)
        return made[key]

    return get
