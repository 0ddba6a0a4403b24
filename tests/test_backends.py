"""Backend choice, overrides, and the reasons a backend cannot run; build info and `mae-kernels info`."""
import os
import subprocess
import sys

import pytest
import torch

import mae_kernels
from mae_kernels import _ext, backends, info


def test_extension_loaded_and_matches_torch():
    assert _ext.load_error is None, _ext.load_error
    info = _ext.build_info()
    assert info["torch_version"] == torch.__version__


def test_build_for_another_torch_is_refused_with_rebuild_hint():
    code = ("import torch; torch.__version__ = '0.0.1'; from mae_kernels import _ext, backends; "
            "print(_ext.load_error); print(backends.why_not('cpu', 'cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "built for torch" in out and "0.0.1 is installed" in out and "pip install --no-build-isolation" in out
    assert out.count("rebuild it with") == 2  # the cpu backend reports the same reason


def test_auto_choice_on_cpu_is_compiled_cpu():
    assert backends.select("op", "cpu") == "cpu"


def test_context_manager_forces_and_restores():
    with mae_kernels.use_backend("reference"):
        assert backends.select("op", "cpu") == "reference"
        with mae_kernels.use_backend("triton"):
            assert backends.select("op", "cpu") == "triton"
        assert backends.select("op", "cpu") == "reference"
    assert backends.select("op", "cpu") == "cpu"


def test_env_variable_forces(monkeypatch):
    monkeypatch.setenv("MAE_KERNELS_BACKEND", "reference")
    assert backends.select("op", "cpu") == "reference"
    monkeypatch.setenv("MAE_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MAE_KERNELS_BACKEND must be one of"):
        backends.select("op", "cpu")


def test_forced_backend_that_cannot_run_says_why():
    with mae_kernels.use_backend("cuda"):
        with pytest.raises(mae_kernels.BackendUnavailable, match="cuda backend needs CUDA tensors"):
            mae_kernels.random_masking(torch.randn(2, 4, 3), 0.5)


def test_unknown_backend_name_rejected():
    with pytest.raises(ValueError, match="use_backend"):
        with mae_kernels.use_backend("fast"):
            pass


def test_triton_needs_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in backends.why_not("triton", "cpu")


def test_triton_op_on_cpu_tensors_without_interpreter_says_why(monkeypatch):
    """Calling a Triton op directly (as opcheck does) on CPU tensors with compiled Triton: the reason, not an
    error from inside the launcher (tests/conftest.py turns it into a skip in the GPU run)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(mae_kernels.BackendUnavailable, match="patchify_triton on CPU tensors: CPU tensors need the "
                                                              "Triton interpreter"):
        torch.ops.mae_kernels.patchify_triton(torch.zeros(1, 3, 4, 4), [1, 2, 2])


def test_op_without_backend_reports_each_reason():
    with pytest.raises(mae_kernels.BackendUnavailable, match="cpu: this op has no such backend"):
        backends.select("op", "cpu", implemented=("cuda",))


def test_report_lists_every_backend():
    report = backends.report("cpu")
    assert set(report) == set(backends.BACKENDS)
    assert report["reference"] is None and report["cpu"] is None
    assert "CUDA tensors" in report["cuda"]


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "mae_kernels", "info"], capture_output=True, text=True, check=True)
    assert "torch" in out.stdout and "backends for cpu tensors" in out.stdout
    assert ("usable" in out.stdout) and ("unusable: tensors are on cpu" in out.stdout)


def test_version_floors_are_pyprojects_lower_bounds():
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")) as f:
        pyproject = f.read()
    for name, floor in info.FLOORS.items():
        assert f'"{name}>={floor[0]}.{floor[1]}"' in pyproject, f"pyproject.toml does not state {name}'s floor"


def test_info_warns_below_the_version_floors(monkeypatch, capsys):
    assert info.version_warnings({"torch": "2.11.0+cu130", "triton": "3.6.0"}) == []
    assert info.version_warnings({"torch": "2.14.1", "triton": None}) == []  # no triton: nothing to warn about
    old = info.version_warnings({"torch": "2.10.0+cu128", "triton": "3.5.1"})
    assert len(old) == 2 and "torch 2.10.0+cu128 is older than 2.11" in old[0] and "triton 3.5.1" in old[1]

    collect = info.collect
    monkeypatch.setattr(info, "collect", lambda: dict(collect(), torch="2.9.1"))
    info.main([])
    assert "WARNING: torch 2.9.1 is older than 2.11" in capsys.readouterr().out


def test_triton_interpreter_refuses_numpy_it_cannot_run_with(monkeypatch):
    assert "numpy<2.4" in backends.interpreter_numpy_problem("3.6.0", "2.4.6")
    assert backends.interpreter_numpy_problem("3.6.0", "2.3.5") is None
    assert backends.interpreter_numpy_problem("3.8.0", "2.4.6") is None
    triton = pytest.importorskip("triton")
    numpy = pytest.importorskip("numpy")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    assert "triton-lang/triton#9171" in backends.why_not("triton", "cpu")
    assert backends.why_not("triton", "cuda") is None  # compiled kernels do not use numpy
