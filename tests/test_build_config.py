"""The build switches of python/build_config.py (used by setup.py, not shipped)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from python import build_config  # noqa: E402


def test_skip_switch(monkeypatch):
    monkeypatch.setenv("MAE_KERNELS_BUILD_CUDA", "0")
    assert build_config.cuda_decision() == (False, "MAE_KERNELS_BUILD_CUDA=0")


def test_bad_switch_value(monkeypatch):
    monkeypatch.setenv("MAE_KERNELS_BUILD_CUDA", "maybe")
    with pytest.raises(ValueError, match="MAE_KERNELS_BUILD_CUDA must be auto, 0 or 1"):
        build_config.cuda_decision()


def test_force_without_nvcc_fails_clearly(monkeypatch):
    monkeypatch.setenv("MAE_KERNELS_BUILD_CUDA", "1")
    monkeypatch.setattr(build_config, "find_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="nvcc not found"):
        build_config.cuda_decision()


def test_default_arch_list_has_ampere_and_hopper(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # empty = unset; monkeypatch restores it afterwards
    archs = build_config.arch_list()
    assert "8.0" in archs and "9.0" in archs


def test_arch_list_honoured(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    assert build_config.arch_list() == "9.0a"
