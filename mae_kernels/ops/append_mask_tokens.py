"""append_mask_tokens: the decoder input of dual masking (VideoMAE v2) in one pass.

Compiled op mae_kernels::append_mask_tokens (CPU, CUDA) and its Triton twin share one schema:
  (x [N, c + K, D], mask_token [1, 1, D], ids_keep [N, K] i64, ids_dec [N, M] i64, pos_embed [1, c + L, D] or
   None, has_cls, out_dtype) -> out [N, c + K + M, D] out_dtype,      c = has_cls
  out[n, j] = (j < c + K ? x[n, j] : mask_token) (+ pos_embed[0, position of row j]): the cls row at position 0,
  kept row k at c + ids_keep[n, k], mask-token row m at c + ids_dec[n, m]; fp32 maths, rounded once.
The backward needs no op of its own: the rows map one to one, so unshuffle_with_mask_tokens_backward with the
identity row map gives grad_x (a copy) and grad_mask_token (fp32, fixed-order sums). pos_embed's gradient (rare:
VideoMAE's tables are fixed) is a deterministic scatter per sample then a sum over the batch, in fp32.
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import FLOAT_DTYPES, check_bool, check_distinct_rows, check_index_range, check_tensor
from .unshuffle_with_mask_tokens import BACKWARD_OPS as UNSHUFFLE_BACKWARD_OPS
from .unshuffle_with_mask_tokens import output_dtypes

_SCHEMA = ("(Tensor x, Tensor mask_token, Tensor ids_keep, Tensor ids_dec, Tensor? pos_embed, bool has_cls, "
           "ScalarType out_dtype) -> Tensor")
_NAME = "append_mask_tokens"


def _triton_forward(*args):
    from ..triton.append_mask_tokens import append_mask_tokens_forward
    return append_mask_tokens_forward(*args)


OPS = {"cpu": compiled_op(_NAME), "cuda": compiled_op(_NAME),
       "triton": define_triton_op(_NAME, _SCHEMA, _triton_forward)}


def _fake(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls, out_dtype):
    N, _, D = x.shape
    return x.new_empty(N, int(has_cls) + ids_keep.shape[1] + ids_dec.shape[1], D, dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    x, mask_token, ids_keep, ids_dec, pos_embed, has_cls, _ = inputs
    ctx.save_for_backward(ids_keep, ids_dec)
    ctx.has_cls, ctx.K, ctx.x_dtype, ctx.mask_dtype = has_cls, ids_keep.shape[1], x.dtype, mask_token.dtype
    ctx.pos_shape = pos_embed.shape if pos_embed is not None else None
    ctx.pos_dtype = pos_embed.dtype if pos_embed is not None else None


def _pos_grad(grad_out, ids_keep, ids_dec, c, L):
    """[1, c + L, D] fp32: every row's gradient added at its position. Within ids_keep and within ids_dec a row's
    positions are distinct (a position may be in both), so each scatter has no collision: deterministic."""
    N, _, D = grad_out.shape
    K = ids_keep.shape[1]
    g = grad_out.float()
    out = g.new_zeros(c + L, D)
    if c:
        out[0] = g[:, 0].sum(0)
    for ids, rows in ((ids_keep, g[:, c:c + K]), (ids_dec, g[:, c + K:])):
        if ids.shape[1]:
            out[c:] += g.new_zeros(N, L, D).scatter_(1, ids.unsqueeze(-1).expand(-1, -1, D), rows).sum(0)
    return out.unsqueeze(0)


def _make_backward(unshuffle_backward):
    def backward(ctx, grad_out):
        ids_keep, ids_dec = ctx.saved_tensors
        need_x, need_mask, _, _, need_pos = ctx.needs_input_grad[:5]
        c = int(ctx.has_cls)
        grad_x = grad_mask = grad_pos = None
        if grad_out is None:  # not materialised (_registry.register): no gradient reached the output
            return grad_x, grad_mask, None, None, grad_pos, None, None
        if need_x or need_mask:
            N, R, _ = grad_out.shape
            identity = torch.arange(R - c, device=grad_out.device).expand(N, R - c)  # row j reads row j
            gx, gm, _ = unshuffle_backward(grad_out.contiguous(), identity, ctx.K, ctx.has_cls, ctx.x_dtype, False)
            grad_x = gx if need_x else None
            grad_mask = gm.to(ctx.mask_dtype) if need_mask else None
        if need_pos:
            grad_pos = _pos_grad(grad_out, ids_keep, ids_dec, c, ctx.pos_shape[1] - c).to(ctx.pos_dtype)
        return grad_x, grad_mask, None, None, grad_pos, None, None
    return backward


for _backend in ("cuda", "triton"):  # cpu shares cuda's compiled op
    register([OPS[_backend]], _fake, _make_backward(UNSHUFFLE_BACKWARD_OPS[_backend]), _setup_context)


def _validate(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls, out_dtype):
    check_bool("has_cls", has_cls)
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES)
    N, rows, D = x.shape
    c = int(has_cls)
    check_tensor("ids_keep", ids_keep, ndim=2, dtypes=(torch.int64,), device=x.device, shape=(N, rows - c))
    check_tensor("ids_dec", ids_dec, ndim=2, dtypes=(torch.int64,), device=x.device, shape=(N, None))
    check_tensor("mask_token", mask_token, ndim=3, dtypes=FLOAT_DTYPES, device=x.device, shape=(1, 1, D))
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or out_dtype not in FLOAT_DTYPES):
        raise TypeError(f"out_dtype must be None or one of {FLOAT_DTYPES}, got {out_dtype!r}")
    if pos_embed is None:
        return  # positions are not read
    check_tensor("pos_embed", pos_embed, ndim=3, dtypes=FLOAT_DTYPES, device=x.device, shape=(1, None, D))
    L = pos_embed.shape[1] - c
    if L < 1:
        raise ValueError(f"pos_embed must have {'1 + ' if c else ''}L rows with L >= 1 positions, got shape "
                         f"{tuple(pos_embed.shape)}")
    check_index_range("ids_keep", ids_keep, L, "positions")
    check_index_range("ids_dec", ids_dec, L, "positions")
    check_distinct_rows("ids_keep", ids_keep)  # MAE_KERNELS_DEBUG=1 only
    check_distinct_rows("ids_dec", ids_dec)


def append_mask_tokens(x, mask_token, ids_keep, ids_dec, pos_embed=None, has_cls=False, out_dtype=None):
    """The decoder input of VideoMAE v2's dual masking, in one pass: cat([x + pos[ids_keep],
    mask_token + pos[ids_dec]], 1).

    x: [N, K, D] encoder tokens (after the encoder-to-decoder Linear) in ids_keep order, or [N, 1 + K, D] with a
    cls row first (has_cls=True); mask_token: [1, 1, D]; ids_keep: [N, K] int64, the position of each row of x;
    ids_dec: [N, M] int64, the decoder-visible positions that get a mask token (v2 gives them to every
    decoder-visible position, encoder-visible ones included: a position may be in both); pos_embed: optional
    [1, (1 +) L, D] table (row 0 the cls row's with has_cls). Returns [N, (1 +) K + M, D]: the rows of x, then the
    M mask tokens, each + the pos_embed row of its position. Unlike unshuffle_with_mask_tokens (the image MAE
    decoder's full [N, (1 +) L, D] layout), positions not in ids_dec get no row: the decoder's attention, which
    carries position only through pos_embed, sees K + M tokens instead of L.
    Output dtype and rounding as unshuffle_with_mask_tokens (cat's promotion, or out_dtype computed in fp32 and
    rounded once). Differentiable in x, mask_token and pos_embed (fp32, deterministic). Positions are
    range-checked when pos_embed is given (they are read only then); with MAE_KERNELS_DEBUG=1 each of ids_keep
    and ids_dec must also hold distinct positions per row.
    """
    _validate(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls, out_dtype)
    out_dtype, op_dtype = output_dtypes(x, mask_token, pos_embed, out_dtype)
    backend = select(_NAME, x.device.type)
    if backend == "reference":
        return reference.append_mask_tokens(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls).to(out_dtype)
    out = OPS[backend](x, mask_token, ids_keep, ids_dec, pos_embed, has_cls, op_dtype)
    return out if op_dtype == out_dtype else out.to(out_dtype)
