"""The one place that turns device and dtype arguments into torch objects.

``resolve_dtype`` (a dtype, its name or None), ``default_device`` (CUDA when available, else
the CPU), ``check_device`` (one device, with the errors every entry point gives),
``check_devices`` (a list of them, as ``encode(device=[...])`` and the batch job take) and
``parse_devices`` (the command line's ``all`` / ``cuda:0,cuda:1``). It imports only torch, so
every layer may use it (checkpoint loading resolves dtypes with it too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_device",
    "check_devices",
    "default_device",
    "is_device_list",
    "parse_devices",
    "resolve_dtype",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype) -> torch.dtype:
    """A torch dtype from a dtype, its name (``"bfloat16"``, ``"bf16"`` ...) or None (float32)."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in _DTYPES:
        return _DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device``; a clear ``ValueError`` for a bad name or missing CUDA."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return dev


def check_devices(devices: Sequence) -> list[str]:
    """Validate a device list; return the devices as strings (``"cuda:1"``, ``"cpu"``)."""
    if len(devices) == 0:
        raise ValueError("device=[] names no device; give one or more, e.g. ['cuda:0', 'cuda:1']")
    out = []
    for d in devices:
        dev = check_device(d)
        if dev.type == "cuda":
            index = torch.cuda.current_device() if dev.index is None else dev.index
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {d!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
                )
            dev = torch.device("cuda", index)
        out.append(str(dev))
    return out


def is_device_list(device) -> bool:
    """True for a list or tuple of devices (``encode(device=[...])``), the one way to ask for
    several devices; a single device, or None, runs in this process."""
    return isinstance(device, (list, tuple))


def parse_devices(spec) -> list[str] | None:
    """A device list as the command line and the batch job name it: None (none named),
    ``"all"`` (every visible GPU, the CPU when there is none), ``"cuda:0,cuda:1"`` or a list.
    Split and expanded only; :func:`check_devices` checks the entries."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            n = torch.cuda.device_count()
            return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
        return [d.strip() for d in spec.split(",") if d.strip()]
    return [str(d) for d in spec]
