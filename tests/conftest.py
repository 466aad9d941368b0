"""Shared pytest configuration."""

from __future__ import annotations

import importlib.metadata
import platform

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
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return ["versions: " + ", ".join(versions), f"cpu: {cpu}"]


def pytest_sessionstart(session) -> None:
    # written even under -q, which hides pytest's own header
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in _environment_lines():
            reporter.write_line(line)
