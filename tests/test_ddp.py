"""Pre-training with torchrun on CPU (gloo), 2 processes, a few steps of the tiny model on tiny images.
DDP: every rank trains on its shard, gradients are averaged (the ranks stay identical), rank 0 logs and writes
the checkpoint. FSDP2 (--fsdp; fully_shard runs on CPU with gloo in torch 2.14): the same training as DDP's from
the same weights, data and masks, and its checkpoint (whole tensors, gathered) loads into a single-process model
and resumes in a single process.
The fused path needs mae_kernels' fused ops (random_masked_patch_embed, unshuffle_with_mask_tokens,
masked_mse_loss, denormalize_pred), merged from other branches."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--device", "cpu", "--input-size", "32", "--batch-size", "2", "--samples-per-epoch", "8", "--epochs", "2",
        "--max-steps", "3", "--num-workers", "0", "--no-progress", "--no-figures"]
# The default data and the loader (pip install -e .[demo]).
pytest.importorskip("torchvision", reason="torchvision is not installed")
pytest.importorskip("skimage", reason="scikit-image (the sample photographs) is not installed")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed+gloo")


def torchrun(out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mae_kernels", "pretrain", *ARGS, "--output-dir", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "2 process(es)" in log and "effective batch 4" in log
    assert log.count("checkpoint:") == 1  # rank 0 only
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 1)  # 8 / 2 ranks / 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the bare model's names
    return log, ckpt


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("ddp") / "out")


def test_torchrun_two_processes_gloo(ddp_run):
    log, _ = ddp_run
    assert "(DDP)" in log and "ranks in sync: True" in log


def test_fsdp2_two_processes_gloo(ddp_run, tmp_path):
    from mae_kernels import pretrain
    from mae_kernels.models import mae_vit_tiny

    log, ckpt = torchrun(tmp_path / "fsdp", "--fsdp")
    assert "(FSDP2)" in log and "ranks in sync" not in log
    _, ref = ddp_run
    # Same weights, data, masks and averaged gradients as DDP: the same run up to summation order.
    torch.testing.assert_close(ckpt["losses"], ref["losses"], rtol=1e-5, atol=0)
    assert ckpt["model"].keys() == ref["model"].keys()
    for k in ref["model"]:
        assert type(ckpt["model"][k]) is torch.Tensor, k  # gathered, not a DTensor shard
        torch.testing.assert_close(ckpt["model"][k], ref["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    model = mae_vit_tiny(img_size=32)
    model.load_state_dict(ckpt["model"], strict=True)
    # The optimizer state is whole too: the run resumes in a single process.
    out = tmp_path / "single"
    single = [a if a != "2" or ARGS[i - 1] != "--batch-size" else "4" for i, a in enumerate(ARGS)]  # same batch
    rc = pretrain.main(single + ["--max-steps", "4", "--output-dir", str(out),
                                 "--resume", str(tmp_path / "fsdp" / "checkpoint.pth")])
    assert rc == 0
    resumed = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 4 and resumed["losses"][:3] == ckpt["losses"]
