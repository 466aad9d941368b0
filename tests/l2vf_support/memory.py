"""The process's resident memory, for leak tests."""

from __future__ import annotations

import os


def resident_memory_mb() -> float:
    """This process's resident memory in MiB (Linux ``/proc/self/statm``): leak tests."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
