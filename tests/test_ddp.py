"""Pre-training with torchrun + DistributedDataParallel on CPU (gloo), 2 processes, a few steps of the tiny
model on tiny images: every rank trains on its shard, gradients are averaged (the ranks stay identical), rank 0
logs and writes the checkpoint.
The fused path needs mae_kernels' fused ops (random_masked_patch_embed, unshuffle_with_mask_tokens,
masked_mse_loss, denormalize_pred), merged from other branches."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed+gloo")
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mae_kernels", "pretrain", "--device", "cpu", "--input-size", "32", "--batch-size", "2",
           "--samples-per-epoch", "8", "--epochs", "2", "--max-steps", "3", "--num-workers", "0", "--no-progress",
           "--no-figures", "--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "2 process(es)" in log and "effective batch 4" in log
    assert log.count("checkpoint:") == 1  # rank 0 only
    assert "ranks in sync: True" in log
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 1)  # 8 / 2 ranks / 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the bare model's names
