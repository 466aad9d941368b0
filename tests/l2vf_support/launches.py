"""Counting Triton kernel launches: the spies the launch tests put in place of kernels (to show,
e.g., that a backward launches no forward kernel)."""

from __future__ import annotations


class LaunchSpy:
    """Counts the launches (``kernel[grid](...)``) of one Triton kernel and runs them."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def spy_on(monkeypatch, module, names) -> dict[str, LaunchSpy]:
    """Replace the kernels ``names`` of ``module`` by spies (undone with ``monkeypatch``)."""
    spies = {}
    for name in names:
        spies[name] = LaunchSpy(getattr(module, name))
        monkeypatch.setattr(module, name, spies[name])
    return spies


def take_counts(spies: dict[str, LaunchSpy]) -> dict[str, int]:
    """Each spy's launches since the last call, then zero."""
    counts = {name: spy.launches for name, spy in spies.items()}
    for spy in spies.values():
        spy.launches = 0
    return counts
