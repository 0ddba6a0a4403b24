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
    # The per-op order for CUDA tensors and its evidence, printed with or without a GPU.
    assert "not GPU measurements" in out.stdout
    assert "masked_patch_embed          triton > cuda > reference: triton first" in out.stdout
    assert "other ops                   cuda > triton > reference: cuda first by default" in out.stdout


@pytest.fixture
def cuda_and_triton_available(monkeypatch):
    """Both GPU backends able to run on CUDA tensors, as on a GPU machine with a CUDA build and triton."""
    pytest.importorskip("triton")
    monkeypatch.delenv("MAE_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "load_error", None)
    monkeypatch.setattr(_ext, "has_cuda_kernels", lambda: True)
    assert backends.why_not("cuda", "cuda") is None and backends.why_not("triton", "cuda") is None


def test_cuda_order_follows_each_ops_evidence(cuda_and_triton_available, monkeypatch):
    assert backends.select("masked_patch_embed", "cuda") == "triton"  # one fused GEMM: 87% vs 79% predicted
    for op in ("random_masking", "masked_patchify", "unshuffle_with_mask_tokens", "masked_mse_loss",
               "append_mask_tokens", "patchify", "mask_to_indices"):
        assert backends.select(op, "cuda") == "cuda", op
    with mae_kernels.use_backend("cuda"):  # forcing still wins
        assert backends.select("masked_patch_embed", "cuda") == "cuda"
    # The next in the op's order when the first cannot run.
    monkeypatch.setattr(backends, "triton_problem", lambda device_type: "triton is not installed")
    assert backends.select("masked_patch_embed", "cuda") == "cuda"
    monkeypatch.setattr(_ext, "has_cuda_kernels", lambda: False)
    assert backends.select("random_masking", "cuda") == "reference"


def test_cpu_order_is_unchanged_for_every_op():
    for op in list(backends.CUDA_ORDER) + ["append_mask_tokens"]:
        assert backends.auto_order(op, "cpu")[0] == ("cpu", "reference")
        assert backends.select(op, "cpu") == "cpu"


def test_each_cuda_order_entry_states_its_evidence():
    for op, (order, reason) in backends.CUDA_ORDER.items():
        assert op in mae_kernels.__all__, f"CUDA_ORDER names {op!r}, which is no public op"
        assert sorted(order) == ["cuda", "reference", "triton"] and order[-1] == "reference", (op, order)
        assert reason.startswith(f"{order[0]} first") and "%" in reason, (op, reason)  # a prediction, cited
        assert "not GPU measurements" in backends.auto_order(op, "cuda")[1]
    assert backends.auto_order("append_mask_tokens", "cuda")[0] == backends.DEFAULT_CUDA_ORDER[0]


def test_report_for_an_op_says_why_each_backend_was_not_chosen(cuda_and_triton_available):
    report = backends.report("cuda", "masked_patch_embed")
    assert list(report) == ["triton", "cuda", "reference", "cpu"]  # the op's order first
    assert report["triton"] is None
    assert report["cuda"].startswith("not chosen: triton comes first for masked_patch_embed on cuda tensors "
                                     "(order triton > cuda > reference: triton first") and "87%" in report["cuda"]
    assert report["cpu"].startswith("cannot run: tensors are on cuda")
    assert backends.report("cuda", "masked_mse_loss")["triton"].startswith("not chosen: cuda comes first")
    cpu = backends.report("cpu", "masked_patch_embed")
    assert cpu["cpu"] is None and cpu["reference"].startswith("not chosen: cpu comes first")
    assert cpu["triton"].startswith("not chosen: not in the automatic order for cpu tensors")
    with mae_kernels.use_backend("reference"):
        forced = backends.report("cpu", "masked_patch_embed")
    assert forced["reference"] is None and "'reference' is forced" in forced["cpu"]


@pytest.mark.gpu
def test_gpu_ops_run_on_their_ordered_backend():
    """On a GPU with both backends: masked_patch_embed's forward and backward run Triton, random_masking cuda."""
    if backends.why_not("cuda", "cuda") or backends.why_not("triton", "cuda"):
        pytest.skip("needs both the cuda and the triton backend")
    imgs = torch.randn(2, 3, 32, 32, device="cuda")
    weight = torch.randn(8, 3, 16, 16, device="cuda", requires_grad=True)
    ids_keep = torch.tensor([[0, 2], [1, 3]], device="cuda")
    tokens = mae_kernels.masked_patch_embed(imgs, ids_keep, weight, None)
    assert "masked_patch_embed_triton" in tokens.grad_fn.name()
    x_masked = mae_kernels.random_masking(torch.randn(2, 4, 8, device="cuda", requires_grad=True), 0.5)[0]
    assert "triton" not in x_masked.grad_fn.name()


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
