"""Smoke test of an installed mae_kernels (`make test-wheel` runs it from a folder outside the checkout, with the
interpreter of the virtualenv the wheel or `pip install .` went into): the package and its compiled extension
import from site-packages, the extension records the torch it was built for and that torch is the one installed,
and a training step of the tiny MAE on the compiled CPU kernels (every fused op, forward and backward) matches
the eager official path. Usage: python wheel_smoke.py CHECKOUT_DIR"""
import os
import sys

import torch

import mae_kernels
from mae_kernels import _ext
from mae_kernels.models import mae_vit_tiny

checkout = os.path.realpath(sys.argv[1])
where = os.path.realpath(mae_kernels.__file__)
assert not where.startswith(checkout + os.sep) and "site-packages" in where, f"imported from {where}"
assert _ext._C is not None, _ext.load_error
assert os.path.realpath(_ext._C.__file__).startswith(os.path.dirname(where)), _ext._C.__file__
info = _ext.build_info()
assert info["torch_version"] == torch.__version__, (info["torch_version"], torch.__version__)

torch.manual_seed(0)
eager, fused = mae_vit_tiny(img_size=32, use_fused_ops=False), mae_vit_tiny(img_size=32, use_fused_ops=True)
fused.load_state_dict(eager.state_dict())
imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, fused.patch_embed.num_patches)
with mae_kernels.use_backend("cpu"):  # the compiled kernels, not the reference fallback
    loss_f, _, mask_f = fused(imgs, 0.75, noise)
    loss_f.backward()
loss_e, _, mask_e = eager(imgs, 0.75, noise)
loss_e.backward()
assert torch.equal(mask_f, mask_e)
torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6)
for (name, pf), pe in zip(fused.named_parameters(), eager.parameters()):
    if pe.grad is not None:
        torch.testing.assert_close(pf.grad, pe.grad, rtol=1e-4, atol=1e-6, msg=name)
print(f"mae_kernels {mae_kernels.__version__} from {os.path.dirname(where)}: extension built for torch "
      f"{info['torch_version']} (cuda kernels {'on' if info['with_cuda'] else 'off'}), fused step == eager: OK")
