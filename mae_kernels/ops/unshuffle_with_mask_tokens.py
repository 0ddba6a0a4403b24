"""unshuffle_with_mask_tokens: MAE's decoder input (mask tokens appended, unshuffled, + pos_embed) in one gather.

Compiled op mae_kernels::unshuffle_with_mask_tokens (CPU, CUDA) and its Triton twin share one schema:
  (x [N, c + K, D], mask_token [1, 1, D], ids_restore [N, L] i64, pos_embed [1, c + L, D] or None, has_cls,
   out_dtype) -> out [N, c + L, D] out_dtype,      c = has_cls
  out[n, c + l] = (ids_restore[n, l] < K ? x[n, c + ids_restore[n, l]] : mask_token) (+ pos_embed[0, c + l]),
  cls row copied, computed in fp32 and rounded once to out_dtype.
Backward op (fused, reads grad_out once): grad_x (a gather, x's dtype), grad_mask_token [1, 1, D] and
grad_pos_embed [1, c + L, D] in fp32 (two-stage deterministic reductions; grad_pos_embed empty unless asked).
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import FLOAT_DTYPES, check_bool, check_permutation_rows, check_tensor

_SCHEMA = ("(Tensor x, Tensor mask_token, Tensor ids_restore, Tensor? pos_embed, bool has_cls, "
           "ScalarType out_dtype) -> Tensor")
_BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor ids_restore, int K, bool has_cls, ScalarType x_dtype, "
                    "bool pos_grad) -> (Tensor grad_x, Tensor grad_mask_token, Tensor grad_pos_embed)")


def _triton_forward(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype):
    from ..triton.unshuffle_with_mask_tokens import unshuffle_with_mask_tokens_forward
    return unshuffle_with_mask_tokens_forward(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype)


def _triton_backward(grad_out, ids_restore, K, has_cls, x_dtype, pos_grad):
    from ..triton.unshuffle_with_mask_tokens import unshuffle_with_mask_tokens_backward
    return unshuffle_with_mask_tokens_backward(grad_out, ids_restore, K, has_cls, x_dtype, pos_grad)


_NAME = "unshuffle_with_mask_tokens"
OPS = {"cpu": compiled_op(_NAME), "cuda": compiled_op(_NAME),
       "triton": define_triton_op(_NAME, _SCHEMA, _triton_forward)}
BACKWARD_OPS = {"cpu": compiled_op(_NAME + "_backward"), "cuda": compiled_op(_NAME + "_backward"),
                "triton": define_triton_op(_NAME + "_backward", _BACKWARD_SCHEMA, _triton_backward)}


def _fake(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype):
    N, _, D = x.shape
    return x.new_empty(N, int(has_cls) + ids_restore.shape[1], D, dtype=out_dtype)


def _fake_backward(grad_out, ids_restore, K, has_cls, x_dtype, pos_grad):
    N, R, D = grad_out.shape
    f32 = torch.float32
    grad_pos = grad_out.new_empty(1, R, D, dtype=f32) if pos_grad else grad_out.new_empty(0, dtype=f32)
    return (grad_out.new_empty(N, int(has_cls) + K, D, dtype=x_dtype), grad_out.new_empty(1, 1, D, dtype=f32),
            grad_pos)


def _setup_context(ctx, inputs, output):
    x, mask_token, ids_restore, pos_embed, has_cls, _ = inputs
    ctx.save_for_backward(ids_restore)
    ctx.has_cls = has_cls
    ctx.K = x.shape[1] - int(has_cls)
    ctx.x_dtype = x.dtype
    ctx.mask_dtype = mask_token.dtype
    ctx.pos_dtype = pos_embed.dtype if pos_embed is not None else None


def _make_backward(backward_op):
    def backward(ctx, grad_out):
        (ids_restore,) = ctx.saved_tensors
        need_x, need_mask, _, need_pos = ctx.needs_input_grad[:4]
        if grad_out is None or not (need_x or need_mask or need_pos):  # None: not materialised (_registry)
            return None, None, None, None, None, None
        grad_x, grad_mask, grad_pos = backward_op(grad_out.contiguous(), ids_restore, ctx.K, ctx.has_cls,
                                                  ctx.x_dtype, bool(need_pos))
        return (grad_x if need_x else None, grad_mask.to(ctx.mask_dtype) if need_mask else None, None,
                grad_pos.to(ctx.pos_dtype) if need_pos else None, None, None)
    return backward


for _backend in ("cuda", "triton"):  # cpu shares cuda's compiled op
    register([OPS[_backend]], _fake, _make_backward(BACKWARD_OPS[_backend]), _setup_context)
    register([BACKWARD_OPS[_backend]], _fake_backward)


def _validate(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype):
    check_bool("has_cls", has_cls)
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    N, rows, D = x.shape
    check_tensor("ids_restore", ids_restore, ndim=2, dtypes=(torch.int64,), device=x.device, shape=(N, None))
    L = ids_restore.shape[1]
    c = int(has_cls)
    if not c <= rows <= c + L:
        raise ValueError(f"x must have between {c} and {c + L} rows ({'cls + ' if c else ''}kept rows, "
                         f"L = {L} from ids_restore), got shape {tuple(x.shape)}")
    check_tensor("mask_token", mask_token, ndim=3, dtypes=FLOAT_DTYPES, device=x.device, shape=(1, 1, D))
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed, ndim=3, dtypes=FLOAT_DTYPES, device=x.device, shape=(1, c + L, D))
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES):
        raise TypeError(f"out_dtype must be None or one of {FLOAT_DTYPES}, got {out_dtype!r}")
    check_permutation_rows("ids_restore", ids_restore)  # MAE_KERNELS_DEBUG=1 only


def output_dtypes(x, mask_token, pos_embed, out_dtype):
    """(out_dtype, op_dtype) of the decoder-input ops: out_dtype defaults to cat's promotion of x, mask_token and
    pos_embed. The kernels round once from fp32, which is the reference's result whenever the promoted dtype is
    fp32 or the output dtype; otherwise (a low-precision promotion cast to another dtype) they write the promoted
    dtype (op_dtype), cast afterwards."""
    promoted = torch.promote_types(x.dtype, mask_token.dtype)
    if pos_embed is not None:
        promoted = torch.promote_types(promoted, pos_embed.dtype)
    if out_dtype is None:
        out_dtype = promoted
    return out_dtype, (out_dtype if promoted in (torch.float32, out_dtype) else promoted)


def unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed=None, has_cls=True, out_dtype=None):
    """The MAE decoder input in one pass: mask tokens for the removed patches, unshuffled to the original order.

    x: [N, 1 + K, D] (cls row first) or [N, K, D] with has_cls=False, the kept tokens in ids_keep order (any
    strides); mask_token: [1, 1, D]; ids_restore: [N, L] int64 (from random_masking); pos_embed: optional
    [1, 1 + L, D] ([1, L, D] without cls). Returns [N, 1 + L, D] (or [N, L, D]): row 1 + l is
    x[:, 1 + ids_restore[:, l]] when ids_restore[:, l] < K, else mask_token; row 0 is x's cls row; + pos_embed.

    Output dtype: by default torch.promote_types of x, mask_token and pos_embed, exactly as the reference (fp16
    or bf16 x with fp32 parameters gives fp32). out_dtype (e.g. x.dtype) emits another dtype directly: the
    result is the reference's cast to out_dtype (computed in fp32 and rounded once; no fp32 copy is written).
    Differentiable in x, mask_token and pos_embed (gradients accumulated in fp32, deterministic).
    With MAE_KERNELS_DEBUG=1 ids_restore is checked to be a permutation of 0..L-1 per row (not under
    torch.compile); otherwise out-of-range ids read mask_token (never out of bounds).
    """
    _validate(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype)
    out_dtype, op_dtype = output_dtypes(x, mask_token, pos_embed, out_dtype)
    backend = select(_NAME, x.device.type)
    if backend == "reference":
        return reference.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed, has_cls).to(out_dtype)
    out = OPS[backend](x, mask_token, ids_restore, pos_embed, has_cls, op_dtype)
    return out if op_dtype == out_dtype else out.to(out_dtype)
