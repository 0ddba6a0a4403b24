"""Registration helpers shared by every op module: the Triton variant of a compiled op (same schema, name
suffixed _triton, runnable on CUDA and, through the Triton interpreter, on CPU), fake kernels and autograd."""
import torch

from .. import _ext
from ..backends import BackendUnavailable, triton_problem

LIB = torch.library.Library("mae_kernels", "FRAGMENT")


def define_triton_op(name, schema, impl):
    """Define mae_kernels::<name>_triton(<schema>) implemented by `impl` on CPU and CUDA; returns the op."""
    qualname = f"{name}_triton"
    LIB.define(qualname + schema)
    def cpu_impl(*args, **kwargs):
        # Compiled Triton cannot touch CPU tensors: say why instead of failing inside the launcher.
        reason = triton_problem("cpu")
        if reason is not None:
            raise BackendUnavailable(f"mae_kernels::{qualname} on CPU tensors: {reason}")
        return impl(*args, **kwargs)

    LIB.impl(qualname, cpu_impl, "CPU")
    LIB.impl(qualname, _on_input_device(impl), "CUDA")
    return getattr(torch.ops.mae_kernels, qualname).default


def _on_input_device(impl):
    """Run a Triton launcher with its first CUDA input's device current: Triton launches on the current device
    (and torch's current stream of that device), so inputs on cuda:1 while cuda:0 is current need the guard
    that the compiled ops get from c10::cuda::CUDAGuard."""
    def on_device(*args):
        device = next((a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda), None)
        if device is None:
            return impl(*args)
        with torch.cuda.device(device):
            return impl(*args)
    return on_device


def compiled_op(name):
    """torch.ops.mae_kernels.<name> when the extension is loaded, else None."""
    return getattr(torch.ops.mae_kernels, name).default if _ext._C is not None else None


def register(ops, fake, backward=None, setup_context=None):
    """Register the same fake kernel (and autograd) for each op in `ops` (None entries are skipped).

    Autograd does not materialise gradients (ctx.set_materialize_grads(False)): the gradient of an output nobody
    differentiates (random_masking's mask and index outputs, the loss op's stored grad_pred) reaches `backward`
    as None instead of a zero-filled tensor of the output's size, one launch (and for grad_pred 77 MB of
    writes) per step for nothing. Every backward therefore takes None for any of its output gradients."""
    if backward is not None:
        setup_context = _without_materialized_grads(setup_context)
    for op in ops:
        if op is None:
            continue
        torch.library.register_fake(op, fake, lib=LIB)
        if backward is not None:
            torch.library.register_autograd(op, backward, setup_context=setup_context, lib=LIB)


def _without_materialized_grads(setup_context):
    def setup(ctx, inputs, output, **keyword_only_inputs):
        ctx.set_materialize_grads(False)
        if setup_context is not None:
            setup_context(ctx=ctx, inputs=inputs, output=output, **keyword_only_inputs)
    return setup
