"""The interpreter tests: Triton kernels run on the CPU under ``TRITON_INTERPRET=1``.

Run: ``TRITON_INTERPRET=1 python -m pytest tests/interpret -q``. Triton reads the variable when
the kernels are decorated, so these modules need a pytest process of their own: in any other
process (or without triton) each module here is skipped before it is imported. Every test here
is marked ``interpret``.
"""

from __future__ import annotations

import os
import zlib

import pytest


class InterpretModule(pytest.Module):
    """A test module of this folder: skipped unimported outside the interpreter, else marked."""

    def collect(self):
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("interpreter tests need TRITON_INTERPRET=1 (a pytest process of their own)")
        pytest.importorskip("triton")
        self.add_marker(pytest.mark.interpret)
        return super().collect()


def pytest_pycollect_makemodule(module_path, parent):
    return InterpretModule.from_parent(parent, path=module_path)


@pytest.fixture
def seed_from_test_name(request):
    """Seeds torch's global generator from the test's name (parameters included): each case
    draws its own inputs, the same in every run."""
    import torch

    torch.manual_seed(zlib.crc32(request.node.name.encode()))
