"""Ahead-of-time compile check of every Triton kernel for real GPU targets, without a GPU.

The launchers themselves run on meta tensors of the benchmark shapes with each @triton.jit kernel replaced by
a recorder, so what gets compiled is exactly what they would launch: the same arguments, constexprs,
num_warps and num_stages. Each distinct launch is then compiled with triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32)) down to a cubin with the ptxas bundled in the triton package, and its
resources are checked: shared memory against the device limit, registers x threads against the register
file, local memory (register spills), and the grid against CUDA's limits. Then facts that decide speed, read
from the compiled code (see check_code): no runtime integer division in per-element index math, 16-byte global
accesses in the main loop of copy-like kernels, GEMM operand tiles loaded by cp.async as wide as their rows'
alignment allows (GEMM_OPERANDS), at least MIN_BLOCKS_PER_SM blocks per SM, no approximate division.

Must run with TRITON_INTERPRET=0 set before triton is imported (under the interpreter @triton.jit makes no
compilable function): `TRITON_INTERPRET=0 python -m mae_kernels.triton.compile_check [--arch 90 80]`.
tests/test_triton_compile.py runs it in a subprocess.
"""
import argparse
import contextlib
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

MODULES = ("random_masking", "masked_patchify", "masked_patch_embed", "unshuffle_with_mask_tokens",
           "append_mask_tokens", "masked_mse_loss", "tube_mask_indices", "mask_to_indices",
           "masked_patch_embed_bias_grad")
# Per-block limits (CUDA C programming guide, compute capabilities table).
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
REGISTERS_PER_BLOCK = 65536
GRID_LIMITS = (2**31 - 1, 65535, 65535)
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
           torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1", torch.float64: "fp64"}
_OPTIONS = ("num_warps", "num_stages", "maxnreg")
HEAVY = "[first arch only] "  # prefix of the scenarios too slow to compile for every arch
# The 16-byte access check fails from this triton on; older compilers pick narrower vectors for some kernels the
# newer one widens (triton 3.6: 8-byte loads in the unshuffle backward's main loop), which is reported, not fatal.
WIDTH_CHECKED_FROM = (3, 8)


def _triton_release():
    import triton

    from ..backends import release

    return release(triton.__version__)


@dataclass
class Launch:
    kernel: object  # the JITFunction
    grid: tuple
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    case: str

    def key(self):
        return (self.kernel.__name__, tuple(sorted(self.signature.items())),
                tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())), tuple(sorted(self.options.items())),
                tuple(sorted(self.attrs)))

    def describe(self):
        ty = ",".join(f"{k}:{v}" for k, v in self.signature.items() if v != "constexpr")
        cx = ",".join(f"{k}={v}" for k, v in self.constexprs.items())
        op = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kernel.__name__}[{cx}; {op}]({ty})"


@dataclass
class Result:
    launch: Launch
    arch: int
    ok: bool
    error: str = ""
    shared: int = 0
    registers: int = 0
    local: int = 0  # bytes of local memory per thread: register spills (or stack arrays)
    threads: int = 0
    seconds: float = 0.0  # compile time (the GPU run pays it again at the first launch, per process)
    problems: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # read from the compiled code (check_code)


def _arg_type(value):
    """Triton signature type of a runtime argument, as the JIT specializes it."""
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        if -2**31 <= value < 2**31:
            return "i32"
        return "i64" if -2**63 <= value < 2**63 else "u64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__} argument {value!r}")


def _bind(kernel, grid, args, kwargs, case):
    """The Launch the JIT would compile for kernel[grid](*args, **kwargs) (same specialization rules: ints equal
    to 1 become constants, 16-divisible ints and 16-aligned pointers get the divisibility hint)."""
    names = list(kernel.arg_names)
    values = dict(zip(names, args))
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    values.update(kwargs)
    missing = []
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        param = kernel.params[i]
        if name not in values:
            if param.has_default:
                values[name] = param.default
            else:
                missing.append(name)
                continue
        v = values[name]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = v
        elif isinstance(v, int) and not isinstance(v, bool) and v == 1 and not param.do_not_specialize:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = _arg_type(v)
            aligned = (v.storage_offset() * v.element_size()) % 16 == 0 if isinstance(v, torch.Tensor) else (
                isinstance(v, int) and not isinstance(v, bool) and v % 16 == 0)
            if aligned and not (param.do_not_specialize or param.do_not_specialize_on_alignment):
                attrs[(i,)] = [["tt.divisibility", 16]]
    if missing:
        raise TypeError(f"{kernel.__name__}: launch without arguments {missing} ({case})")
    options.setdefault("num_warps", 4)
    options.setdefault("num_stages", 3)
    return Launch(kernel, tuple(grid), signature, constexprs, attrs, options, case)


class _Recorder:
    """Stands in for a JITFunction: kernel[grid](...) records the launch instead of running it."""

    def __init__(self, kernel, sink, case):
        self.kernel, self.sink, self.case = kernel, sink, case

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            g = grid(kwargs) if callable(grid) else grid
            self.sink.append(_bind(self.kernel, g, args, dict(kwargs), self.case[0]))
        return launch


@contextlib.contextmanager
def recording(sink, case):
    """Replace every @triton.jit kernel of the launcher modules by a recorder appending to `sink`."""
    saved = []
    for name, value in all_kernels().items():
        mod_name, attr = name.split(".")
        saved.append((importlib.import_module(f"mae_kernels.triton.{mod_name}"), attr, value))
    for mod, attr, value in saved:
        setattr(mod, attr, _Recorder(value, sink, case))
    try:
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def _m(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


LOW = (torch.float16, torch.bfloat16)
ALL = (torch.float32,) + LOW


def scenarios():
    """(description, thunk) pairs calling the launchers with the benchmark shapes (see
    mae_kernels/benchmark/cases/) and the edge paths (no noise, D == 0, no ids, longest sort)."""
    from . import masked_mse_loss as mse
    from . import masked_patch_embed as pe
    from . import masked_patchify as pf
    from . import random_masking as rm
    from . import append_mask_tokens as am
    from . import unshuffle_with_mask_tokens as un

    out = []
    # random_masking: ViT-B (L=196), video (L=1568), the longest sort (MAX_L); seeds as int32 and int64.
    # The sort of MAX_L keys takes minutes to compile: one dtype, both noise paths, an int64 seed, and only for
    # the first --arch (HEAVY marks these cases).
    for dtype in ALL:
        for L, D in ((196, 768), (1568, 768), (rm.MAX_L, 64)):
            K = L // 4
            if L == rm.MAX_L and dtype != torch.float32:
                continue
            for noise in (None, _m(256, L)):
                for seed in ((0, 2**40 + 3) if L < rm.MAX_L else (2**40 + 3,)):
                    heavy = HEAVY if L == rm.MAX_L else ""
                    out.append((f"{heavy}random_masking_forward {dtype} L={L} D={D} noise={noise is not None} "
                                f"seed={seed}",
                                lambda dtype=dtype, L=L, D=D, K=K, noise=noise, seed=seed: rm.random_masking_forward(
                                    _m(256, L, D, dtype=dtype), noise, K, seed, 4096)))
            out.append((f"random_masking_backward {dtype} L={L} D={D}",
                        lambda dtype=dtype, L=L, D=D, K=K: rm.random_masking_backward(
                            _m(256, K, D, dtype=dtype), _m(256, K, dtype=torch.int64), L)))
    out.append(("random_masking_forward D=0", lambda: rm.random_masking_forward(_m(256, 196, 0), None, 49, 7, 0)))
    # patchify family: ViT-B/16 and ViT-H/14 at 224, with and without ids_keep.
    for dtype in ALL:
        for p, K in ((16, 49), (14, 64)):
            imgs = _m(256, 3, 224, 224, dtype=dtype)
            ids = _m(256, K, dtype=torch.int64)
            L = (224 // p) ** 2
            out.append((f"masked_patchify gather {dtype} p={p}",
                        lambda imgs=imgs, ids=ids, p=p: pf.gather(imgs, ids, (1, p, p))))
            out.append((f"patchify gather {dtype} p={p}", lambda imgs=imgs, p=p: pf.gather(imgs, None, (1, p, p))))
            out.append((f"masked_patchify scatter {dtype} p={p}",
                        lambda dtype=dtype, ids=ids, K=K, p=p: pf.scatter(_m(256, K, p * p * 3, dtype=dtype), ids,
                                                                           (1, p, p), (224, 224))))
            out.append((f"unpatchify scatter {dtype} p={p}",
                        lambda dtype=dtype, L=L, p=p: pf.scatter(_m(256, L, p * p * 3, dtype=dtype), None, (1, p, p),
                                                                  (224, 224))))
        if dtype in LOW:  # the converting gather: autocast's fp32 images -> GEMM-dtype patches (backward's grad_W)
            for p, K in ((16, 49), (14, 64)):
                out.append((f"masked_patchify gather float32->{dtype} p={p}",
                            lambda dtype=dtype, p=p, K=K: pf.gather(_m(256, 3, 224, 224), _m(256, K, dtype=torch.int64),
                                                                    (1, p, p), dtype)))
        # video: 16 frames of 224x224 in 2x16x16 tubelets (L = 1568, 156 kept at ratio 0.9), batch 32.
        clip = _m(32, 3, 16, 224, 224, dtype=dtype)
        out.append((f"masked_patchify gather video {dtype}",
                    lambda clip=clip: pf.gather(clip, _m(32, 156, dtype=torch.int64), (2, 16, 16))))
        out.append((f"masked_patchify scatter video {dtype}",
                    lambda dtype=dtype: pf.scatter(_m(32, 156, 1536, dtype=dtype), _m(32, 156, dtype=torch.int64),
                                                   (2, 16, 16), (16, 224, 224))))
    # masked_patch_embed: ViT-B/16 and ViT-H/14; pos_embed in the same dtype or float32 (autocast).
    for dtype in ALL:
        for p, D, K in ((16, 768, 49), (14, 1280, 64)):
            L = (224 // p) ** 2
            for pos_dtype in {dtype, torch.float32}:
                for with_pos in (True, False):
                    out.append((f"masked_patch_embed {dtype} p={p} D={D} pos={with_pos and pos_dtype}",
                                lambda dtype=dtype, p=p, D=D, K=K, L=L, pos_dtype=pos_dtype, with_pos=with_pos:
                                pe.masked_patch_embed(_m(256, 3, 224, 224, dtype=dtype), _m(256, K, dtype=torch.int64),
                                                      _m(D, 3, p, p, dtype=dtype), _m(D, dtype=dtype),
                                                      _m(1, 1 + L, D, dtype=pos_dtype) if with_pos else None)))
    # autocast: fp32 images rounded to the GEMM dtype in the A-tile loads, fp32 pos_embed.
    for dtype in LOW:
        for p, D, K in ((16, 768, 49), (14, 1280, 64)):
            L = (224 // p) ** 2
            out.append((f"masked_patch_embed autocast float32->{dtype} p={p} D={D}",
                        lambda dtype=dtype, p=p, D=D, K=K, L=L: pe.masked_patch_embed(
                            _m(256, 3, 224, 224), _m(256, K, dtype=torch.int64), _m(D, 3, p, p, dtype=dtype),
                            _m(D, dtype=dtype), _m(1, 1 + L, D))))
    # tubelet embedding (video, 2x16x16, L = 1568, 156 kept, D = 768): full table (VideoMAE) or separable (mae_st).
    for dtype in ALL:
        for pos in ("table", "separable"):
            out.append((f"masked_patch_embed video {dtype} pos={pos}",
                        lambda dtype=dtype, pos=pos: pe.masked_patch_embed(
                            _m(32, 3, 16, 224, 224, dtype=dtype), _m(32, 156, dtype=torch.int64),
                            _m(768, 3, 2, 16, 16, dtype=dtype), _m(768, dtype=dtype),
                            _m(1, 1568, 768) if pos == "table" else _m(1, 196, 768),
                            _m(1, 8, 768) if pos == "separable" else None)))
    # unshuffle_with_mask_tokens: the decoder (D=512), ViT-B and video lengths, cls or not, fp32 or low outputs.
    for dtype in ALL:
        for L, K in ((196, 49), (1568, 156)):
            for has_cls in (True, False):
                c = int(has_cls)
                for out_dtype in {dtype, torch.float32}:
                    for with_pos in (True, False):
                        out.append((f"unshuffle forward {dtype}->{out_dtype} L={L} cls={has_cls} pos={with_pos}",
                                    lambda dtype=dtype, L=L, K=K, c=c, out_dtype=out_dtype, with_pos=with_pos:
                                    un.unshuffle_with_mask_tokens_forward(
                                        _m(256, c + K, 512, dtype=dtype), _m(1, 1, 512), _m(256, L, dtype=torch.int64),
                                        _m(1, c + L, 512) if with_pos else None, bool(c), out_dtype)))
                    for pos_grad in (True, False):
                        out.append((f"unshuffle backward {dtype} L={L} cls={has_cls} pos_grad={pos_grad}",
                                    lambda dtype=dtype, L=L, K=K, c=c, out_dtype=out_dtype, pos_grad=pos_grad:
                                    un.unshuffle_with_mask_tokens_backward(
                                        _m(256, c + L, 512, dtype=out_dtype), _m(256, L, dtype=torch.int64), K,
                                        bool(c), dtype, pos_grad)))
    # append_mask_tokens: VideoMAE v2's decoder input (160 kept + 784 mask tokens of L=1568, D=384), with a cls
    # row and the image lengths too.
    for dtype in ALL:
        for L, K, M, c in ((1568, 160, 784, 0), (196, 49, 98, 1)):
            for out_dtype in {dtype, torch.float32}:
                for with_pos in (True, False):
                    out.append((f"append_mask_tokens {dtype}->{out_dtype} L={L} cls={c} pos={with_pos}",
                                lambda dtype=dtype, L=L, K=K, M=M, c=c, out_dtype=out_dtype, with_pos=with_pos:
                                am.append_mask_tokens_forward(
                                    _m(256, c + K, 384, dtype=dtype), _m(1, 1, 384), _m(256, K, dtype=torch.int64),
                                    _m(256, M, dtype=torch.int64), _m(1, c + L, 384) if with_pos else None,
                                    bool(c), out_dtype)))
    # masked_mse_loss: P=768 (ViT-B/16) and 588 (ViT-H/14); all rows (no ids) or the removed rows only.
    for dtype in ALL:
        for p in (16, 14):
            L = (224 // p) ** 2
            P = p * p * 3
            for rows in (L, L - L // 4):
                for norm in (True, False):
                    ids = _m(256, rows, dtype=torch.int64) if rows != L else None
                    args = lambda dtype=dtype, rows=rows, P=P, L=L, ids=ids: (
                        _m(256, rows, P, dtype=dtype), _m(256, 3, 224, 224, dtype=dtype), _m(256, L), ids)
                    for with_grad in (True, False):
                        out.append((f"masked_mse_loss forward {dtype} P={P} rows={rows} norm={norm} grad={with_grad}",
                                    lambda args=args, p=p, norm=norm, with_grad=with_grad:
                                    mse.masked_mse_loss_forward(*args(), p, norm, 1e-6, with_grad)))
                    if rows != L and norm and p == 16:  # MAE's layout: pred x[:, 1:, :] and ids rows, views
                        view = lambda dtype=dtype, rows=rows, P=P, L=L: (
                            _m(256, rows + 1, P, dtype=dtype)[:, 1:], _m(256, 3, 224, 224, dtype=dtype), _m(256, L),
                            _m(256, L, dtype=torch.int64)[:, L - rows:])
                        out.append((f"masked_mse_loss forward {dtype} P={P} rows={rows} strided pred and ids",
                                    lambda view=view, p=p: mse.masked_mse_loss_forward(*view(), p, True, 1e-6, True)))
                    for need_pred, need_imgs in ((True, False), (False, True), (True, True)):
                        out.append((f"masked_mse_loss backward {dtype} P={P} rows={rows} norm={norm} "
                                    f"pred={need_pred} imgs={need_imgs}",
                                    lambda args=args, p=p, norm=norm, need_pred=need_pred, need_imgs=need_imgs:
                                    mse.masked_mse_loss_backward(_m(), *args(), p, norm, 1e-6, need_pred,
                                                                 need_imgs)))
    # masked_mse_loss on videos (16 frames at 224, tubelets 2x16x16, L=1568, ratio 0.9): VideoMAE (per-channel
    # target on un-normalised pixels, the 1408 masked rows, P=1536, mean or per-token), mae_st (linspace target
    # frames, one per token, all rows, P=768) and the image rule on tubelets with the imgs gradient.
    video = (2, 16, 16)
    for dtype in ALL:
        vargs = lambda dtype=dtype: (_m(32, 1408, 1536, dtype=dtype), _m(32, 3, 16, 224, 224, dtype=dtype),
                                     _m(32, 1568), _m(32, 1408, dtype=torch.int64))
        for per_token in (False, True):
            out.append((f"masked_mse_loss forward video VideoMAE {dtype} P=1536 per_token={per_token}",
                        lambda vargs=vargs, per_token=per_token: mse.masked_mse_loss_forward(
                            *vargs(), video, True, 1e-6, True, None, _m(2, 3), True, per_token)))
        out.append((f"masked_mse_loss backward video VideoMAE {dtype} P=1536",
                    lambda vargs=vargs: mse.masked_mse_loss_backward(
                        _m(), *vargs(), video, True, 1e-6, True, False, None, _m(2, 3), True, False)))
        out.append((f"masked_mse_loss forward video mae_st {dtype} P=768",
                    lambda dtype=dtype: mse.masked_mse_loss_forward(
                        _m(32, 1568, 768, dtype=dtype), _m(32, 3, 16, 224, 224, dtype=dtype), _m(32, 1568), None,
                        video, True, 1e-6, True, _m(8, dtype=torch.int64))))
        out.append((f"masked_mse_loss backward video tubelet {dtype} P=1536 pred+imgs",
                    lambda vargs=vargs: mse.masked_mse_loss_backward(
                        _m(), *vargs(), video, True, 1e-6, True, True)))
    out += _edge_scenarios(rm, pf, pe, un, mse)
    out += _video_mask_scenarios()
    out += _bias_grad_scenarios()
    return out


def _bias_grad_scenarios():
    """masked_patch_embed's backward pass over grad_out: ViT-B/16 (K = 49, D = 768) and ViT-H/14 (K = 64, D = 1280)
    at N = 256, the video tubelets (N = 32, K = 156); the model's sliced fp32 gradient cast to the autocast dtype,
    a contiguous one without a copy, a sliced low-precision one copied; the tiny sizes of the tests."""
    from . import masked_patch_embed_bias_grad as bg

    out = []
    for N, K, D in ((256, 49, 768), (256, 64, 1280), (32, 156, 768), (2, 3, 5), (300, 1, 3)):
        for low in LOW:
            out.append((f"bias_grad fp32->{low} copy N={N} K={K} D={D}",
                        lambda N=N, K=K, D=D, low=low: bg.masked_patch_embed_bias_grad(
                            _m(N, K + 1, D)[:, 1:], low, True, low)))
        for dtype in ALL:
            out.append((f"bias_grad {dtype} no copy N={N} K={K} D={D}",
                        lambda N=N, K=K, D=D, dtype=dtype: bg.masked_patch_embed_bias_grad(
                            _m(N, K, D, dtype=dtype), dtype, False, dtype)))
            out.append((f"bias_grad {dtype} copy of a slice N={N} K={K} D={D}",
                        lambda N=N, K=K, D=D, dtype=dtype: bg.masked_patch_embed_bias_grad(
                            _m(N, K + 1, D, dtype=dtype)[:, 1:], dtype, True, torch.float32)))
    return out


def _video_mask_scenarios():
    """tube_mask_indices at VideoMAE's grids (hw = 196, 256; t = 8, ratio 0.9) and the longest sort (MAX_HW), both
    noise paths; mask_to_indices at L = 1568 and 196 and a row of many chunks; and the tiny sizes of the tests
    (==1 specializations: t, hw, m, K of 1)."""
    from . import mask_to_indices as mti
    from . import tube_mask_indices as tmi

    out = []
    for N, hw, t, m in ((256, 196, 8, 176), (256, 256, 8, 230), (256, 1024, 4, 921), (256, tmi.MAX_HW, 2, 3686),
                        (2, 1, 1, 0),
                        (2, 1, 1, 1), (2, 5, 3, 3), (2, 16, 1, 12)):
        for noise in (None, _m(N, hw)):
            out.append((f"tube_mask_indices N={N} hw={hw} t={t} m={m} noise={noise is not None}",
                        lambda N=N, hw=hw, t=t, m=m, noise=noise: tmi.tube_mask_indices(
                            _m(N, hw, 0), noise, t, m, 2**40 + 3, 4096)))
    for N, L, K in ((256, 1568, 160), (256, 196, 49), (64, 20000, 5000), (2, 1, 0), (2, 1, 1), (2, 7, 3)):
        out.append((f"mask_to_indices N={N} L={L} K={K}",
                    lambda N=N, L=L, K=K: mti.mask_to_indices(_m(N, L, dtype=torch.bool), K)))
    return out


def _edge_scenarios(rm, pf, pe, un, mse):
    """The tiny and degenerate sizes of the unit tests (L = 1, K = 0 or 1, D = 3, P = 48, tiles wider than the
    data): other block sizes and ==1 specializations than the benchmark shapes."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for L, K, D in ((1, 0, 3), (1, 1, 3), (4, 1, 5), (10, 3, 1), (50, 25, 7)):
            for noise in (None, _m(2, L)):
                out.append((f"edge random_masking_forward {dtype} L={L} K={K} D={D} noise={noise is not None}",
                            lambda dtype=dtype, L=L, K=K, D=D, noise=noise: rm.random_masking_forward(
                                _m(2, L, D, dtype=dtype), noise, K, 5, 8)))
            out.append((f"edge random_masking_backward {dtype} L={L} K={K} D={D}",
                        lambda dtype=dtype, L=L, K=K, D=D: rm.random_masking_backward(
                            _m(2, K, D, dtype=dtype), _m(2, K, dtype=torch.int64), L)))
        imgs = _m(2, 3, 8, 12, dtype=dtype)
        out.append((f"edge masked_patchify {dtype}",
                    lambda imgs=imgs: pf.gather(imgs, _m(2, 3, dtype=torch.int64), (1, 4, 4))))
        out.append((f"edge unpatchify {dtype}", lambda dtype=dtype: pf.scatter(_m(2, 6, 48, dtype=dtype), None,
                                                                             (1, 4, 4), (8, 12))))
        out.append((f"edge masked_patchify scatter {dtype}",  # several bands per program
                    lambda dtype=dtype: pf.scatter(_m(2, 3, 48, dtype=dtype), _m(2, 3, dtype=torch.int64), (1, 4, 4),
                                                   (8, 12))))
        out.append((f"edge masked_patchify video {dtype}",
                    lambda dtype=dtype: pf.gather(_m(2, 3, 4, 6, 10, dtype=dtype), _m(2, 3, dtype=torch.int64),
                                                  (2, 3, 2))))
        out.append((f"edge masked_patch_embed {dtype}",
                    lambda imgs=imgs, dtype=dtype: pe.masked_patch_embed(
                        imgs, _m(2, 3, dtype=torch.int64), _m(8, 3, 4, 4, dtype=dtype), _m(8, dtype=dtype),
                        _m(1, 7, 8))))
        for K, c in ((3, 1), (0, 0)):
            out.append((f"edge unshuffle forward {dtype} K={K} cls={c}",
                        lambda dtype=dtype, K=K, c=c: un.unshuffle_with_mask_tokens_forward(
                            _m(3, c + K, 5, dtype=dtype), _m(1, 1, 5), _m(3, 10, dtype=torch.int64), _m(1, c + 10, 5),
                            bool(c), dtype)))
            out.append((f"edge unshuffle backward {dtype} K={K} cls={c}",
                        lambda dtype=dtype, K=K, c=c: un.unshuffle_with_mask_tokens_backward(
                            _m(3, c + 10, 5, dtype=dtype), _m(3, 10, dtype=torch.int64), K, bool(c), dtype, True)))
        for ids in (None, _m(2, 4, dtype=torch.int64)):
            rows = 6 if ids is None else 4
            out.append((f"edge masked_mse_loss {dtype} rows={rows}",
                        lambda dtype=dtype, ids=ids, rows=rows: mse.masked_mse_loss_backward(
                            _m(), _m(2, rows, 48, dtype=dtype), _m(2, 3, 8, 12, dtype=dtype), _m(2, 6), ids, 4, True,
                            1e-6, True, True)))
    return out


def all_kernels():
    """{module.kernel name: JITFunction} of every kernel of the launcher modules."""
    import triton

    out = {}
    for name in MODULES:
        mod = importlib.import_module(f"mae_kernels.triton.{name}")
        for attr, value in vars(mod).items():
            if isinstance(value, triton.runtime.jit.JITFunction) and attr.endswith("kernel"):
                out[f"{name}.{attr}"] = value
    return out


def collect():
    """The distinct launches of all scenarios (first description kept for each), in a stable order. Raises when
    a kernel of the launcher modules is never launched by the scenarios (a new kernel needs a scenario)."""
    launches = {}
    case = [""]
    sink = []
    with recording(sink, case):
        for desc, thunk in scenarios():
            case[0] = desc
            thunk()
    for launch in sink:
        launches.setdefault(launch.key(), launch)
    launched = {id(ln.kernel) for ln in sink}
    missing = [name for name, k in all_kernels().items() if id(k) not in launched]
    if missing:
        raise RuntimeError(f"kernels never launched by compile_check.scenarios(): {missing}")
    return list(launches.values())


# --- SASS and resource usage from cuobjdump (shared with tests/test_cuda_resources.py and python/static_report.py) -

_SASS_LINE = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][\w.]*)([^;]*);")


def cuobjdump_path(bundled_first=False):
    """cuobjdump from PATH or the one bundled with triton (that one first if bundled_first), else None."""
    import shutil

    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    except ImportError:
        bundled = None
    found = [bundled if bundled and os.path.exists(bundled) else None, shutil.which("cuobjdump")]
    return next((t for t in (found if bundled_first else found[::-1]) if t), None)


def cuobjdump(args, bundled_first=False):
    """stdout of cuobjdump `args` (e.g. ["-sass", path])."""
    tool = cuobjdump_path(bundled_first)
    if tool is None:
        raise FileNotFoundError("no cuobjdump (neither on PATH nor bundled with triton)")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def parse_sass_listing(text):
    """{(arch, mangled name): [(address, opcode, operands)]} of a `cuobjdump -sass` listing (predicates dropped)."""
    kernels, arch, current = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = kernels.setdefault((arch, m.group(1)), [])
            continue
        m = _SASS_LINE.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return kernels


def parse_sass(text, below=0x10000):
    """{(arch, mangled name): [opcodes]} of a `cuobjdump -sass` listing, of the instructions at addresses below
    `below` (None: all). The default keeps tests/test_cuda_resources.py's checks as they were (its parser read
    4-digit addresses only): past 64 KiB sit the compiler's IEEE division / square root helpers of the large
    kernels, whose argument classification compares carry .FTZ (correct code its fast-math rule would flag)."""
    return {k: [op for a, op, _ in v if below is None or a < below] for k, v in parse_sass_listing(text).items()}


def parse_res_usage(text):
    """{(arch, mangled name): {REG, STACK, SHARED, LOCAL}} of a `cuobjdump -res-usage` listing."""
    kernels, arch = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        m = re.match(r"\s*Function (\S+):", line)
        if m and i + 1 < len(lines):
            kernels[(arch, m.group(1))] = {k: int(v) for k, v in
                                           re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", lines[i + 1])}
    return kernels


def demangle(names):
    """{mangled: demangled} through c++filt (names unchanged when it is missing)."""
    names = list(names)
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    except FileNotFoundError:
        return {n: n for n in names}
    got = out.stdout.splitlines() if out.returncode == 0 else []
    return dict(zip(names, got)) if len(got) == len(names) else {n: n for n in names}


def sass_access_bytes(opcode):
    """Bytes one thread moves with a global load/store opcode: LDG.E.128 -> 16, STG.E.U16 -> 2, LDG.E -> 4."""
    m = re.search(r"\.(128|64|U16|S16|U8|S8)(?:\.|$)", opcode)
    return {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}[m.group(1)] if m else 4


def _resource_usage(cubin, arch, name):
    """(registers, local bytes) of the kernel in `cubin` from cuobjdump (bundled with triton)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = cuobjdump(["--dump-resource-usage", f.name], bundled_first=True)
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", text)
    if m is None:
        raise RuntimeError(f"cannot read resource usage of {name} from cuobjdump:\n{text}")
    return int(m.group(1)), int(m.group(2))


# --- facts read from the compiled code ----------------------------------------------------------------------
# Per-SM limits (CUDA occupancy calculator data, identical for sm_80 and sm_90 except shared memory): registers
# are allocated per warp in units of 256, and the driver reserves 1 KiB of shared memory per block.
SM_LIMITS = {80: dict(shared=164 * 1024), 90: dict(shared=228 * 1024)}
SM_REGISTERS, SM_WARPS, SM_BLOCKS, REG_UNIT, SHARED_RESERVED = 65536, 64, 32, 256, 1024
MIN_BLOCKS_PER_SM = 2
# Copy-like kernels: (row length in elements, whether loads / stores must be 16 B wide) for a launch. A row of
# 16-byte-aligned length is read or written with 16-byte accesses; the image side of patchify is a gather along
# channels (not contiguous), so only its [N*K, P] side counts.
COPY_KERNELS = {
    "_copy_kernel": lambda c: (c.get("U", 0) * c.get("PH", 0) * c.get("PW", 0) * c.get("C", 0), c["TO_IMAGE"],
                               not c["TO_IMAGE"]),
    "_scatter_bands_kernel": lambda c: (c["PW"], False, True),  # image rows written; rows read along C
    "_random_masking_fwd_kernel": lambda c: ("D", c["HAS_D"], c["HAS_D"]),
    "_random_masking_bwd_kernel": lambda c: ("D", True, True),
    "_forward_kernel": lambda c: ("D", True, True),
    "_backward_rows_kernel": lambda c: ("D", True, True),
    "_append_kernel": lambda c: ("D", True, True),
    "_bias_grad_rows_kernel": lambda c: ("D", True, c["WRITE"]),
}


def _embed_operands(launch):
    """masked_patch_embed's operand tiles: the pixels (A, [BLOCK_M, BLOCK_K]) move in runs within a patch row,
    as wide as every row's start is aligned: gcd(pw, the strides, 16) elements when pixels are contiguous along
    W (16 B at p=16, 4 B at p=14 in 16-bit: patch rows start at 28 * wi bytes); the weight (B, [BLOCK_K,
    BLOCK_N]) rows R = C * u * ph * pw long."""
    c, sig = launch.constexprs, launch.signature

    def align(name):  # elements: a stride the JIT made a constant (== 1), or 16 where it saw it 16-divisible
        return c[name] if sig[name] == "constexpr" else (16 if (list(sig).index(name),) in launch.attrs else 1)

    def elt(ptr):
        return int(re.search(r"\d+", sig[ptr]).group(0)) // 8

    pixels = 0
    if c.get("s_w") == 1 and align("img_ptr") > 1:
        run = c["PW"]
        for stride in ("s_n", "s_c", "s_t", "s_h"):
            run = math.gcd(run, align(stride))
        pixels = min(16, (run & -run) * elt("img_ptr"))
    R = c["C"] * c["U"] * c["PH"] * c["PW"]
    weight = min(16, (R & -R) * elt("w_ptr")) if align("w_ptr") > 1 else 0
    return [("pixels (A)", (c["BLOCK_M"], c["BLOCK_K"]), pixels), ("weight (B)", (c["BLOCK_K"], c["BLOCK_N"]), weight)]


# GEMMs that load their operand tiles straight from memory: {kernel: launch -> [(operand, (rows, cols) of its
# tile (told apart by shape), bytes its accesses must move)]}. Accesses of 4 B and more must go global -> shared
# by cp.async (what Triton's pipeliner emits for them), none narrower than the row alignment allows; and, as their
# loads are gathers, MIN_BLOCKS_PER_SM blocks per SM like the copy kernels (not exempt as other tl.dot GEMMs).
GEMM_OPERANDS = {"_masked_patch_embed_kernel": _embed_operands}
_INT_DIV = re.compile(r"= arith\.(divsi|divui|remsi|remui) (%[\w.#]+), (%[\w.#]+) : (.*?) loc\((#\w+)\)")
_CONST = re.compile(r"^\s*(%[\w.#]+) = arith\.constant ")
_LOC_DEF = re.compile(r"^(#\w+) = (loc\(.*)$")
_PTX_LOC = re.compile(r"^\s*\.loc\s.*//\s*(\S+)$")
_PTX_BLOCK = re.compile(r"^(?:\$L__(BB\d+_\d+):|// %bb\.\d+:)")
_PTX_MEM = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*)\s")
_TILE_ACCESS = re.compile(r"tt\.(?:load|store) .*tensor<\d+x\d+x!tt\.ptr<(?:f16|bf16|f32|f64)>.* loc\((#\w+)\)")
_APPROX = re.compile(r"\b(div\.full\.f32|div\.approx\.\S+|sqrt\.approx\.\S+|rcp\.approx\.\S+)")


def blocks_per_sm(arch, registers, threads, shared):
    """Resident blocks per SM that registers, warps and shared memory allow."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // REG_UNIT) * REG_UNIT
    by_regs = (SM_REGISTERS // per_warp) // warps if per_warp else SM_BLOCKS
    by_shared = SM_LIMITS[arch]["shared"] // (shared + SHARED_RESERVED)
    return min(by_regs, by_shared, SM_WARPS // warps, SM_BLOCKS)


def _source_line(loc, locs):
    """file:line of an MLIR location alias (#locN), following named and call-site locations."""
    for _ in range(20):
        text = locs.get(loc, "")
        m = re.search(r'"([^"]+\.py)":(\d+)', text)
        if m:
            return f"{os.path.basename(m.group(1))}:{m.group(2)}"
        m = re.search(r"#\w+", text[4:])
        if m is None:
            break
        loc = m.group(0)
    return "?"


def runtime_divisions(ttgir):
    """Integer divisions and remainders by a run-time value in per-element index math: on a tensor in a kernel
    without loops, anywhere inside a loop. A division by a constant is not one (LLVM turns it into a multiply);
    a scalar one outside loops runs once per program."""
    locs = dict(m.groups() for m in map(_LOC_DEF.match, ttgir.splitlines()) if m)
    consts = {m.group(1) for m in map(_CONST.match, ttgir.splitlines()) if m}
    has_loop = "scf.for" in ttgir or "scf.while" in ttgir
    found, stack = [], []
    for line in ttgir.splitlines():
        s = line.strip()
        if s.startswith("}"):
            stack.pop()
        m = _INT_DIV.search(line)
        if m and m.group(3) not in consts:
            op, _, _, ty, loc = m.groups()
            in_loop = "loop" in stack
            if in_loop or (ty.startswith("tensor<") and not has_loop):
                found.append(f"arith.{op} on {ty.split(',')[0]}{'>' if ',' in ty else ''} "
                             f"{'in a loop ' if in_loop else ''}at {_source_line(loc, locs)}")
        if s.endswith("{"):
            stack.append("loop" if ("scf.for" in s or "scf.while" in s or s.startswith("} do")) else "region")
    return found


def _ptx_main_loop(ptx):
    """The PTX lines of the innermost loops (LLVM annotates every block with its loop), or all lines when the
    kernel has no loop: where a copy kernel spends its time."""
    blocks, inner = [], set()
    for line in ptx.splitlines():
        m = _PTX_BLOCK.match(line)
        if m or not blocks:
            blocks.append([m.group(1) if m else None, None, []])
        block = blocks[-1]
        if "Inner Loop Header" in line:
            inner.add(block[0])
            block[1] = block[0]
        header = re.search(r"in Loop: Header=(BB\d+_\d+)", line)
        if header:
            block[1] = header.group(1)
        block[2].append(line)
    if not inner:
        return ptx.splitlines()
    return [line for label, header, lines in blocks if header in inner for line in lines]


def _width(modifiers):
    """Bytes moved by one ld/st.global with these modifiers (.v4.b32 -> 16)."""
    vec = re.search(r"\.v(\d)", modifiers)
    bits = re.search(r"\.[bfsu](\d+)$", modifiers)
    return (int(vec.group(1)) if vec else 1) * int(bits.group(1)) // 8


def _tile_access_lines(ttgir):
    """file:line of the tt.load / tt.store of 2-D tiles of floating-point data: the rows a copy kernel moves
    (not indices, nor 1-D vectors such as a mask token broadcast to every row)."""
    locs = dict(m.groups() for m in map(_LOC_DEF.match, ttgir.splitlines()) if m)
    return {_source_line(m.group(1), locs) for m in map(_TILE_ACCESS.search, ttgir.splitlines()) if m}


def narrow_accesses(ptx, ttgir, loads, stores, want):
    """Global loads / stores of the copied data tiles in the main loop narrower than `want` bytes:
    [(instruction, file:line)]."""
    data_lines = _tile_access_lines(ttgir)
    found, where = [], "?"
    for line in _ptx_main_loop(ptx):
        loc = _PTX_LOC.match(line)
        if loc:
            where = loc.group(1).rsplit(":", 1)[0]
        m = _PTX_MEM.search(line)
        if m is None or not (loads if m.group(1) == "ld" else stores) or where not in data_lines:
            continue
        if _width(m.group(2)) < want:
            found.append((f"{m.group(1)}.global{m.group(2)}", where))
    return sorted(set(found))


_TILE_LOAD = re.compile(r"(?:tt\.load|ttg\.async_copy_global_to_local) .*?tensor<(\d+)x(\d+)x!tt\.ptr<\w+>.* "
                        r"loc\((#\w+)\)")
_PTX_ASYNC = re.compile(r"\b(cp\.async\.c[ag]\.shared\.global) \[[^\]]*\], \[[^\]]*\], (0x[0-9a-f]+|\d+)")


def tile_loads(ptx, ttgir, shape):
    """Every global access (instruction, bytes, file:line) that loads 2-D tiles of `shape` (rows, cols): the
    ld.global or cp.async instructions at the source lines of those tiles' tt.load (or their pipelined copies)."""
    locs = dict(m.groups() for m in map(_LOC_DEF.match, ttgir.splitlines()) if m)
    lines = {_source_line(m.group(3), locs) for m in map(_TILE_LOAD.search, ttgir.splitlines())
             if m and (int(m.group(1)), int(m.group(2))) == tuple(shape)}
    found, where = [], "?"
    for line in ptx.splitlines():
        loc = _PTX_LOC.match(line)
        if loc:
            where = loc.group(1).rsplit(":", 1)[0]
        if where not in lines:
            continue
        m = _PTX_ASYNC.search(line)
        if m:
            found.append((m.group(1), int(m.group(2), 0), where))
            continue
        m = _PTX_MEM.search(line)
        if m and m.group(1) == "ld":
            found.append((f"ld.global{m.group(2)}", _width(m.group(2)), where))
    return sorted(set(found))


def approximate_divisions(ptx):
    """Approximate division / square root instructions (Triton's `/` and tl.sqrt): [(instruction, file:line)]."""
    found, where = [], "?"
    for line in ptx.splitlines():
        loc = _PTX_LOC.match(line)
        if loc:
            where = loc.group(1).rsplit(":", 1)[0]
        m = _APPROX.search(line)
        if m:
            found.append((m.group(1), where))
    return sorted(set(found))


def _copy_width(launch):
    """(bytes wanted, loads?, stores?) for a copy-like kernel's main loop, or None: 16 B where the row length
    allows it, else the largest power of two dividing the row's bytes."""
    spec = COPY_KERNELS.get(launch.kernel.__name__)
    if spec is None:
        return None
    length, loads, stores = spec(launch.constexprs)
    if isinstance(length, str):  # a run-time int: 16-divisible when the JIT specialized it so
        index = list(launch.signature).index(length)
        length = 16 if (index,) in launch.attrs else launch.constexprs.get(length, 1)
    elt = min(int(re.search(r"\d+", t).group(0)) // 8 for n, t in launch.signature.items()
              if t.startswith("*") and not t.startswith("*i"))
    row_bytes = length * elt
    return min(16, row_bytes & -row_bytes), loads, stores  # 0 when the length is unknown: nothing to check


def _low_occupancy_reason(launch, ttgir):
    """Why a launch may run fewer than MIN_BLOCKS_PER_SM blocks per SM, or None: the check is for the memory-
    and integer-bound kernels, which hide latency with resident blocks."""
    if ("tt.dot" in ttgir or "warp_group_dot" in ttgir) and launch.kernel.__name__ not in GEMM_OPERANDS:
        return "a tl.dot GEMM, whose pipelined tiles hide latency"  # the gathering GEMMs need blocks as copies do
    if launch.kernel.__name__ == "_random_masking_fwd_kernel" and launch.constexprs["BLOCK_L"] >= 8192:
        return "the 8192-key sort (16 warps keep it spill-free; one program per sample)"
    if launch.kernel.__name__ == "_tube_mask_kernel" and launch.constexprs["BLOCK_HW"] >= 4096:
        return "the 4096-key sort of the largest spatial grid (64 x 64 patches; one program per sample)"
    return None


def check_code(res, ck):
    """Adds to res.facts the speed facts of the compiled kernel and to res.problems each one that fails."""
    launch, name = res.launch, res.launch.kernel.__name__
    ptx = ck.asm["ptx"]
    divisions = runtime_divisions(ck.asm["ttgir"])
    res.facts["int div/rem (PTX)"] = len(re.findall(r"^\s*(?:@%p\d+ )?(?:div|rem)\.[su]\d+", ptx, re.M))
    for d in divisions:
        res.problems.append(f"{name}: runtime integer division in per-element index math, {d}: make the divisor a "
                            f"constexpr or compute it once per row / program")
    for instr, where in approximate_divisions(ptx):
        res.problems.append(f"{name}: approximate {instr} at {where}, where exact results are promised: use "
                            f"tl.math.div_rn / tl.sqrt_rn")
    wanted = _copy_width(launch)
    if wanted is not None:
        want, loads, stores = wanted
        res.facts["copy width B"] = want
        narrow = [f"{name}: {instr} at {where} in the main loop, narrower than the {want} B the row alignment "
                  f"allows" for instr, where in narrow_accesses(ptx, ck.asm["ttgir"], loads, stores, want)]
        if _triton_release() >= WIDTH_CHECKED_FROM:
            res.problems += narrow
        elif narrow:  # the vector width is the compiler's choice: recorded for older triton, not a failure
            res.facts["narrow accesses"] = narrow
    for operand, shape, want in GEMM_OPERANDS.get(name, lambda ln: [])(launch):
        loads = tile_loads(ptx, ck.asm["ttgir"], shape)
        if not loads:
            res.problems.append(f"{name}: no global load of its {operand} tile {shape[0]}x{shape[1]} found")
            continue
        res.facts[f"{operand} B"] = min(width for _, width, _ in loads)
        res.facts[f"{operand} cp.async"] = all(instr.startswith("cp.async") for instr, _, _ in loads)
        for instr, width, where in loads:
            if width < want:
                res.problems.append(f"{name}: {operand} tile loaded {width} B at a time ({instr} at {where}), "
                                    f"narrower than the {want} B its rows' alignment allows")
            elif want >= 4 and not instr.startswith("cp.async"):
                res.problems.append(f"{name}: {operand} tile loaded through registers ({instr} at {where}), not "
                                    f"by cp.async into shared memory")
    blocks = blocks_per_sm(res.arch, res.registers, res.threads, res.shared)
    res.facts["blocks/SM"] = blocks
    reason = _low_occupancy_reason(launch, ck.asm["ttgir"])
    if blocks < MIN_BLOCKS_PER_SM and reason:
        res.facts["allowed"] = reason
    elif blocks < MIN_BLOCKS_PER_SM:
        res.problems.append(f"{name}: {blocks} block(s) of {res.threads} threads per SM on sm_{res.arch} "
                            f"({res.registers} registers/thread, {res.shared} B shared), fewer than "
                            f"{MIN_BLOCKS_PER_SM}")


def compile_one(launch, arch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    res = Result(launch, arch, ok=False)
    start = time.time()
    try:
        src = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
    except Exception as e:  # noqa: BLE001 - every compiler failure is a finding to report
        res.error = f"{type(e).__name__}: {e}"
        return res
    finally:
        res.seconds = time.time() - start
    md = ck.metadata
    res.shared = int(md.shared)
    res.threads = int(md.num_warps) * 32 * int(getattr(md, "num_ctas", 1))
    res.registers, res.local = _resource_usage(ck.asm["cubin"], arch, launch.kernel.__name__)
    limit = MAX_SHARED.get(arch, 48 * 1024)
    if res.shared > limit:
        res.problems.append(f"shared memory {res.shared} B > {limit} B")
    if res.registers * res.threads > REGISTERS_PER_BLOCK:
        res.problems.append(f"{res.registers} registers x {res.threads} threads > {REGISTERS_PER_BLOCK}")
    if res.local > 0:
        res.problems.append(f"{res.local} B of local memory per thread (register spills)")
    for dim, (g, cap) in enumerate(zip(launch.grid, GRID_LIMITS)):
        if g > cap:
            res.problems.append(f"grid[{dim}] = {g} > {cap}")
    check_code(res, ck)
    res.ok = True
    return res


def fatal(res):
    """Problems that make the launch fail (spills only cost speed)."""
    return [p for p in res.problems if "spills" not in p]


def summary(results):
    """Markdown table: per kernel and arch, the variants compiled and the worst resource use among them."""
    rows = {}
    for r in results:
        if not r.ok:
            continue
        key = (r.launch.kernel.fn.__module__.rsplit(".", 1)[-1], r.launch.kernel.__name__, r.arch)
        n, smem, regs, threads, local, sec, blocks, divs = rows.get(key, (0, 0, 0, 0, 0, 0.0, 99, 0))
        rows[key] = (n + 1, max(smem, r.shared), max(regs, r.registers), max(threads, r.threads),
                     max(local, r.local), max(sec, r.seconds), min(blocks, r.facts.get("blocks/SM", 99)),
                     max(divs, r.facts.get("int div/rem (PTX)", 0)))
    lines = ["| module | kernel | arch | variants | max shared B | max regs/thread | max threads | spills (local B) "
             "| slowest compile s | min blocks/SM | max int div/rem in PTX |", "|---" * 11 + "|"]
    for (mod, name, arch), (n, smem, regs, threads, local, sec, blocks, divs) in sorted(rows.items()):
        lines.append(f"| {mod} | {name} | sm_{arch} | {n} | {smem} | {regs} | {threads} | {local} | {sec:.1f} "
                     f"| {blocks} | {divs} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--report", help="append a markdown summary (triton version, per-kernel worst case)")
    parser.add_argument("--module", choices=MODULES, help="compile only the kernels of this launcher module")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("run with TRITON_INTERPRET=0: the interpreter has no compilable kernels")
    import triton

    launches = [ln for ln in collect() if args.module is None or ln.kernel.fn.__module__.endswith("." + args.module)]
    print(f"triton {triton.__version__}: {len(launches)} distinct launches x archs {args.arch}", flush=True)
    results, failed, errors_shown = [], 0, set()
    for arch in args.arch:
        for launch in launches:
            if arch != args.arch[0] and launch.case.startswith(HEAVY):
                continue
            r = compile_one(launch, arch)
            results.append(r)
            bad = not r.ok or fatal(r)
            failed += bool(bad)
            status = "FAIL" if bad else "ok  "
            usage = (f"smem {r.shared:6d} B, {r.registers:3d} regs x {r.threads:4d} thr, local {r.local} B, "
                     f"{r.seconds:5.1f} s, " + ", ".join(f"{k} {v}" for k, v in r.facts.items())
                     if r.ok else "compile error")
            extra = ("; " + "; ".join(r.problems)) if r.problems else ""
            print(f"{status} sm_{arch} {usage}{extra} | {launch.case} | grid {launch.grid} | {launch.describe()}"[:400],
                  flush=True)
            if not r.ok and r.error not in errors_shown:  # each distinct error in full once
                errors_shown.add(r.error)
                print("    " + r.error.replace("\n", "\n    ")[:4000], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(kernel=r.launch.kernel.__name__, arch=r.arch, ok=r.ok and not fatal(r), error=r.error,
                            shared=r.shared, registers=r.registers, local=r.local, threads=r.threads,
                            seconds=round(r.seconds, 2),
                            problems=r.problems, facts=r.facts, launch=r.launch.describe(), grid=r.launch.grid,
                            case=r.launch.case) for r in results], f, indent=1)
    table = summary(results)
    print(table)
    if args.report:
        with open(args.report, "a") as f:
            f.write(f"\n### triton {triton.__version__}, {', '.join(f'sm_{a}' for a in args.arch)}: "
                    f"{len(results) - failed} of {len(results)} launches compiled within limits\n\n{table}\n")
    print(f"{len(results) - failed} of {len(results)} compiled within limits; {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
