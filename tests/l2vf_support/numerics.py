"""Judging low-precision kernel results (flash-attention's rule)."""

from __future__ import annotations


def assert_close_2x(out, ref, ref64, atol: float, rtol: float, what: str = "output") -> None:
    """Judge a low-precision result fairly (flash-attention's rule): ``out``'s error against the
    float64 reference ``ref64`` may be at most 2x the error of ``ref`` (the PyTorch reference in
    ``out``'s dtype) plus ``atol``/``rtol``. On failure the message says how many elements
    differ, where, and by how much (``torch.testing.assert_close``)."""
    from torch.testing import assert_close

    ref_err = (ref.double() - ref64).abs().max().item()
    assert_close(
        out.double(),
        ref64,
        atol=2 * ref_err + atol,
        rtol=rtol,
        msg=lambda m: f"{what} ({out.dtype}, reference error {ref_err:.3g}): {m}",
    )
