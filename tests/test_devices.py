"""llm2vec_fast.devices: the one place device and dtype arguments become torch objects."""

from __future__ import annotations

import pytest
import torch

from llm2vec_fast.devices import (
    check_device,
    check_devices,
    default_device,
    is_device_list,
    parse_devices,
    resolve_dtype,
)


def test_resolve_dtype_names_and_refusals():
    assert resolve_dtype(None) is resolve_dtype("auto") is torch.float32
    assert resolve_dtype("bf16") is resolve_dtype("torch.bfloat16") is torch.bfloat16
    assert resolve_dtype("half") is resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype(torch.int8)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_dtype("int3")


def test_devices_are_checked_with_clear_errors(monkeypatch):
    assert check_device("cpu") == torch.device("cpu")
    assert check_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="invalid device 'tpu:9'"):
        check_device("tpu:9")
    with pytest.raises(ValueError, match="names no device"):
        check_devices([])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    with pytest.raises(ValueError, match="no CUDA device is available"):
        check_device("cuda:0")


def test_only_a_list_names_several_devices(monkeypatch):
    assert is_device_list(["cpu"]) and is_device_list(("cpu", "cpu"))
    assert not is_device_list(None) and not is_device_list("cuda:0")
    assert not is_device_list(torch.device("cpu"))
    assert parse_devices(None) is None
    assert parse_devices("cuda:0, cuda:1,") == ["cuda:0", "cuda:1"]
    assert parse_devices(["cpu", torch.device("cpu")]) == ["cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert parse_devices("all") == ["cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_devices("all") == ["cuda:0", "cuda:1"]
