"""random_masking and random_mask_indices: MAE's per-sample random masking in one kernel.

Compiled op mae_kernels::random_masking (CPU, CUDA) and its Triton twin random_masking_triton share one schema:
  (x [N, L, D], noise [N, L] float32 or None, len_keep, seed, offset) -> (x_masked [N, K, D], mask [N, L] f32,
                                                                           ids_restore [N, L] i64, ids_keep [N, K] i64)
With noise None the cuda and triton kernels draw the same Philox4x32-10 numbers from (seed, offset) (subsequence
n*L + l, counter offset / 4, torch's own convention; torch.manual_seed reproduces them); the CPU kernel always
gets noise (torch.rand, exactly as the official code). Ties in the noise: lower index first, NaN last, on every
backend. The cuda and triton kernels sort one row per block / program: L <= MAX_L, checked here.
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._rng import seed_offset
from ._validate import check_int, check_mask_ratio, check_tensor, cuda_graph_capturing

# Longest row the cuda and triton kernels sort (one block / program per row; csrc/cuda/kernels/random_masking.cuh
# and mae_kernels/triton/random_masking.py hold the same number).
MAX_L = 8192

_SCHEMA = ("(Tensor x, Tensor? noise, int len_keep, int seed, int offset) -> "
           "(Tensor x_masked, Tensor mask, Tensor ids_restore, Tensor ids_keep)")
_BACKWARD_SCHEMA = "(Tensor grad_x_masked, Tensor ids_keep, int L) -> Tensor"


def _triton_forward(x, noise, len_keep, seed, offset):
    from ..triton.random_masking import random_masking_forward
    return random_masking_forward(x, noise, len_keep, seed, offset)


def _triton_backward(grad_x_masked, ids_keep, L):
    from ..triton.random_masking import random_masking_backward
    return random_masking_backward(grad_x_masked, ids_keep, L)


OPS = {"cpu": compiled_op("random_masking"), "cuda": compiled_op("random_masking"),
       "triton": define_triton_op("random_masking", _SCHEMA, _triton_forward)}
BACKWARD_OPS = {"cpu": compiled_op("random_masking_backward"), "cuda": compiled_op("random_masking_backward"),
                "triton": define_triton_op("random_masking_backward", _BACKWARD_SCHEMA, _triton_backward)}


def _fake(x, noise, len_keep, seed, offset):
    N, L, D = x.shape
    return (x.new_empty(N, len_keep, D), x.new_empty(N, L, dtype=torch.float32),
            x.new_empty(N, L, dtype=torch.long), x.new_empty(N, len_keep, dtype=torch.long))


def _setup_context(ctx, inputs, output):
    ctx.L = inputs[0].shape[1]
    ctx.mark_non_differentiable(output[1])  # the float mask is a function of the noise only, as the reference's
    ctx.save_for_backward(output[3])


def _make_backward(backward_op):
    def backward(ctx, grad_x_masked, _mask, _ids_restore, _ids_keep):
        # Gradients are not materialised (_registry.register): None when only mask got one, for instance; the
        # mask and the indices carry no gradient to x.
        (ids_keep,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0] and grad_x_masked is not None:
            grad_x = backward_op(grad_x_masked.contiguous(), ids_keep, ctx.L)
        return grad_x, None, None, None, None
    return backward


def _fake_backward(grad_x_masked, ids_keep, L):
    N, _, D = grad_x_masked.shape
    return grad_x_masked.new_empty(N, L, D)


for _name in ("cuda", "triton"):  # cpu shares cuda's compiled op
    register([OPS[_name]], _fake, _make_backward(BACKWARD_OPS[_name]), _setup_context)
    register([BACKWARD_OPS[_name]], _fake_backward)


def _validate(x, mask_ratio, noise, generator):
    check_tensor("x", x, ndim=3)
    if x.is_complex():
        raise TypeError(f"x must have a real dtype (floating point, integer or bool), got {x.dtype}")
    check_mask_ratio(mask_ratio)
    if noise is not None:
        check_tensor("noise", noise, ndim=2, dtypes=(torch.float32,), device=x.device, shape=x.shape[:2])
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if noise is None and generator.device.type != x.device.type:
            raise ValueError(f"generator must be a {x.device.type} generator (the device of the tensors), got one "
                             f"on {generator.device}")


def _run(x, mask_ratio, noise, generator):
    """(x_masked, mask, ids_restore, ids_keep) by the selected backend."""
    N, L, _ = x.shape
    keep = reference.len_keep(L, mask_ratio)
    backend = select("random_masking", x.device.type)
    if backend in ("cuda", "triton") and L > MAX_L:
        raise ValueError(f"random_masking: the {backend} backend sorts rows of at most L = {MAX_L} tokens, got "
                         f"L = {L}; use the cpu or reference backend (mae_kernels.use_backend) for longer rows")
    if backend == "reference":
        if noise is None:
            noise = torch.rand(N, L, device=x.device, generator=generator)
        x_masked, mask, ids_restore = reference.random_masking(x, mask_ratio, noise)
        return x_masked, mask, ids_restore, torch.argsort(noise, dim=1, stable=True)[:, :keep]
    seed = offset = 0
    if noise is None:
        if backend == "cpu" or torch.compiler.is_compiling() or cuda_graph_capturing(x):
            # The official torch.rand noise: identical masks to the reference for the same seed, traceable, and
            # fresh at every CUDA graph replay (a seed/offset pair read here would be frozen into the graph).
            noise = torch.rand(N, L, device=x.device, generator=generator)
        else:
            seed, offset = seed_offset(x.device, generator, 4)  # one Philox block of 4 per element
    return OPS[backend](x, noise, keep, seed, offset)


def random_masking(x, mask_ratio, noise=None, generator=None):
    """Drop-in for the official MAE random_masking.

    x: [N, L, D]; mask_ratio in [0, 1); noise: optional [N, L] float32 on x's device (small = kept).
    Returns x_masked [N, len_keep, D] (kept rows in ascending noise order), mask [N, L] float32 (1 = removed),
    ids_restore [N, L] int64, with len_keep = int(L * (1 - mask_ratio)). Differentiable with respect to x.
    """
    _validate(x, mask_ratio, noise, generator)
    x_masked, mask, ids_restore, _ = _run(x, mask_ratio, noise, generator)
    return x_masked, mask, ids_restore


def random_mask_indices(N, L, mask_ratio, noise=None, generator=None, device=None):
    """(ids_keep [N, K] int64, ids_restore [N, L] int64, mask [N, L] float32) without gathering anything:
    ids_keep feeds masked_patchify / masked_patch_embed."""
    check_int("N", N, minimum=1)
    check_int("L", L, minimum=1)
    if device is None:
        device = noise.device if isinstance(noise, torch.Tensor) else torch.device("cpu")
    x = torch.empty(N, L, 0, device=device)  # D = 0: the same kernel, with nothing to gather
    _validate(x, mask_ratio, noise, generator)
    _, mask, ids_restore, ids_keep = _run(x, mask_ratio, noise, generator)
    return ids_keep, ids_restore, mask
