"""Every public op rejects bad input before any kernel runs, on every backend, with an error that names the
argument (and says what was expected and what came). Table-driven: for each op a valid call and a list of
(argument, bad value, exception type, message regex); wrong devices are a "meta" tensor among CPU tensors."""
import math

import pytest
import torch

import mae_kernels

CPU_BACKENDS = ["cpu", "triton", "reference"]
N, C, H, W, P_SIZE, D = 2, 3, 8, 6, 2, 16
L = (H // P_SIZE) * (W // P_SIZE)  # 12
P = P_SIZE * P_SIZE * C  # 12
K = 3


def _ids_keep():
    return torch.stack([torch.randperm(L)[:K] for _ in range(N)])


def _ids_shuffle():
    return torch.stack([torch.randperm(L) for _ in range(N)])


def _imgs():
    return torch.randn(N, C, H, W)


V_SIZE, V_PATCH = (4, H, W), (2, P_SIZE, P_SIZE)  # videos [N, C, 4, 8, 6] in 2x2x2 tubelets
V_L = 2 * L  # 24


def _good_video(op):
    """Keyword arguments of a valid call of `op` on videos ("<op> video" in CASES)."""
    clip = torch.randn(N, C, *V_SIZE)
    ids_keep = torch.stack([torch.randperm(V_L)[:K] for _ in range(N)])
    if op == "patchify":
        return dict(imgs=clip, patch_size=V_PATCH)
    if op == "unpatchify":
        return dict(x=torch.randn(N, V_L, 2 * P), patch_size=V_PATCH, image_size=V_SIZE)
    if op == "masked_patchify":
        return dict(imgs=clip, ids_keep=ids_keep, patch_size=V_PATCH)
    if op == "masked_patch_embed":
        return dict(imgs=clip, ids_keep=ids_keep, weight=torch.randn(D, C, *V_PATCH), bias=torch.randn(D),
                    pos_embed=(torch.randn(1, L, D), torch.randn(1, 2, D)))
    if op == "random_masked_patch_embed":
        return dict(imgs=clip, weight=torch.randn(D, C, *V_PATCH), bias=torch.randn(D),
                    pos_embed=torch.randn(1, V_L, D), mask_ratio=0.75, noise=None, generator=None)
    raise AssertionError(op)


def _video_loss(**kw):
    """masked_mse_loss arguments for videos [N, C, 4, H, W] with tubelets (2, P_SIZE, P_SIZE), updated by kw."""
    args = dict(imgs=torch.randn(N, C, 4, H, W), pred=torch.randn(N, 2 * L, 2 * P), mask=torch.ones(N, 2 * L),
                patch_size=(2, P_SIZE, P_SIZE), ids_shuffle=None)
    args.update(kw)
    return args


def _good(op):
    """Keyword arguments of a valid call of `op` ("<op> video": on videos)."""
    if op.endswith(" video"):
        return _good_video(op.split()[0])
    if op == "random_masking":
        return dict(x=torch.randn(N, 8, 3), mask_ratio=0.5, noise=None, generator=None)
    if op == "random_mask_indices":
        return dict(N=N, L=8, mask_ratio=0.5, noise=None, generator=None, device=None)
    if op == "tube_mask_indices":
        return dict(N=N, t=2, hw=6, mask_ratio=0.5, noise=None, generator=None, device=None)
    if op == "decoder_mask_indices":
        return dict(N=N, t=2, h=2, w=4, mask_ratio=0.5, mask_type="run_cell", start=None, noise=None, generator=None,
                    device=None)
    if op == "mask_to_indices":
        return dict(bool_mask=torch.ones(N, L, dtype=torch.bool).scatter(1, _ids_keep(), False), num_kept=K)
    if op == "patchify":
        return dict(imgs=_imgs(), patch_size=P_SIZE)
    if op == "unpatchify":
        return dict(x=torch.randn(N, L, P), patch_size=P_SIZE, image_size=(H, W))
    if op == "masked_patchify":
        return dict(imgs=_imgs(), ids_keep=_ids_keep(), patch_size=P_SIZE)
    if op == "masked_patch_embed":
        return dict(imgs=_imgs(), ids_keep=_ids_keep(), weight=torch.randn(D, C, P_SIZE, P_SIZE),
                    bias=torch.randn(D), pos_embed=torch.randn(1, 1 + L, D))
    if op == "random_masked_patch_embed":
        return dict(imgs=_imgs(), weight=torch.randn(D, C, P_SIZE, P_SIZE), bias=torch.randn(D),
                    pos_embed=torch.randn(1, 1 + L, D), mask_ratio=0.75, noise=None, generator=None)
    if op == "unshuffle_with_mask_tokens":
        return dict(x=torch.randn(N, 1 + K, D), mask_token=torch.randn(1, 1, D),
                    ids_restore=torch.argsort(_ids_shuffle(), dim=1), pos_embed=torch.randn(1, 1 + L, D),
                    has_cls=True, out_dtype=None)
    if op == "append_mask_tokens":
        return dict(x=torch.randn(N, K, D), mask_token=torch.randn(1, 1, D), ids_keep=_ids_keep(),
                    ids_dec=_ids_keep(), pos_embed=torch.randn(1, L, D), has_cls=False, out_dtype=None)
    if op == "masked_mse_loss":
        ids_shuffle = _ids_shuffle()
        mask = torch.ones(N, L).scatter(1, ids_shuffle[:, :K], 0.0)
        return dict(pred=torch.randn(N, L - K, P), imgs=_imgs(), mask=mask, patch_size=P_SIZE,
                    norm_pix_loss=True, eps=1e-6, ids_shuffle=ids_shuffle)
    if op == "patch_stats":
        return dict(imgs=_imgs(), patch_size=P_SIZE, eps=1e-6)
    if op == "denormalize_pred":
        return dict(pred=torch.randn(N, L, P), imgs=_imgs(), patch_size=P_SIZE, eps=1e-6)
    raise AssertionError(op)


META = "meta"


def meta(t):
    return t.to(META)


# (op, argument, bad value: a function of the valid arguments, exception, regex). The regex starts with the
# argument's name (or says which argument) and, where the message gives them, the expected and received value.
CASES = [
    # random_masking
    ("random_masking", "x", lambda a: [1.0, 2.0], TypeError, r"x must be a torch.Tensor, got list"),
    ("random_masking", "x", lambda a: a["x"][0], ValueError, r"x must have 3 dimensions, got 2"),
    ("random_masking", "x", lambda a: a["x"].to(torch.complex64), TypeError, r"x must have a real dtype.*complex64"),
    ("random_masking", "mask_ratio", lambda a: 1.0, ValueError, r"mask_ratio must be in \[0, 1\), got 1.0"),
    ("random_masking", "mask_ratio", lambda a: -0.1, ValueError, r"mask_ratio must be in \[0, 1\), got -0.1"),
    ("random_masking", "mask_ratio", lambda a: math.nan, ValueError, r"mask_ratio must be in \[0, 1\), got nan"),
    ("random_masking", "mask_ratio", lambda a: True, TypeError, r"mask_ratio must be a Python float.*bool"),
    ("random_masking", "mask_ratio", lambda a: "0.5", TypeError, r"mask_ratio must be a Python float.*str"),
    ("random_masking", "mask_ratio", lambda a: torch.tensor(0.5), TypeError, r"mask_ratio must be a Python float"),
    ("random_masking", "noise", lambda a: torch.rand(2, 7), ValueError, r"noise must have shape \[2, 8\], got"),
    ("random_masking", "noise", lambda a: torch.rand(2, 8, 1), ValueError, r"noise must have 2 dimensions, got 3"),
    ("random_masking", "noise", lambda a: torch.rand(2, 8).double(), TypeError,
     r"noise must have dtype torch.float32, got torch.float64"),
    ("random_masking", "noise", lambda a: torch.rand(2, 8, device=META), ValueError,
     r"noise must be on cpu .*got meta"),
    ("random_masking", "noise", lambda a: [[0.5] * 8] * 2, TypeError, r"noise must be a torch.Tensor, got list"),
    ("random_masking", "generator", lambda a: 0, TypeError, r"generator must be a torch.Generator or None, got int"),
    # random_mask_indices
    ("random_mask_indices", "N", lambda a: 0, ValueError, r"N must be a positive int, got 0"),
    ("random_mask_indices", "N", lambda a: 2.0, TypeError, r"N must be an int, got float"),
    ("random_mask_indices", "N", lambda a: True, TypeError, r"N must be an int, got bool"),
    ("random_mask_indices", "L", lambda a: -1, ValueError, r"L must be a positive int, got -1"),
    ("random_mask_indices", "L", lambda a: "8", TypeError, r"L must be an int, got str"),
    ("random_mask_indices", "mask_ratio", lambda a: 1.5, ValueError, r"mask_ratio must be in \[0, 1\), got 1.5"),
    ("random_mask_indices", "noise", lambda a: torch.rand(2, 9), ValueError, r"noise must have shape \[2, 8\]"),
    ("random_mask_indices", "noise", lambda a: torch.rand(2, 8, dtype=torch.float16), TypeError,
     r"noise must have dtype torch.float32, got torch.float16"),
    ("random_mask_indices", "noise", lambda a: dict(noise=torch.rand(2, 8, device=META), device="cpu"),
     ValueError, r"noise must be on cpu .*got meta"),  # a dict: several arguments changed
    # patchify
    ("patchify", "imgs", lambda a: a["imgs"][0], ValueError, r"imgs must have 4 dimensions, got 3"),
    ("patchify", "imgs", lambda a: a["imgs"].long(), TypeError, r"imgs must have a floating-point dtype, got torch.int64"),
    ("patchify", "imgs", lambda a: a["imgs"].tolist(), TypeError, r"imgs must be a torch.Tensor, got list"),
    ("patchify", "patch_size", lambda a: 4, ValueError, r"imgs: image size 8x6 must be divisible by patch_size=4"),
    ("patchify", "patch_size", lambda a: 0, ValueError, r"patch_size must be a positive int, got 0"),
    ("patchify", "patch_size", lambda a: 2.0, TypeError, r"patch_size must be an int, got float"),
    ("patchify", "patch_size", lambda a: True, TypeError, r"patch_size must be an int, got bool"),
    # unpatchify
    ("unpatchify", "x", lambda a: a["x"][0], ValueError, r"x must have 3 dimensions, got 2"),
    ("unpatchify", "x", lambda a: a["x"].long(), TypeError, r"x must have a floating-point dtype, got torch.int64"),
    ("unpatchify", "x", lambda a: torch.randn(2, 11, 12), ValueError, r"x must have shape \[N, 12, p\*p\*C\].*\(2, 11, 12\)"),
    ("unpatchify", "x", lambda a: torch.randn(2, 12, 10), ValueError, r"x must have shape \[N, 12, p\*p\*C\].*\(2, 12, 10\)"),
    ("unpatchify", "image_size", lambda a: (7, 6), ValueError,
     r"image_size must be positive and divisible by patch_size=2, got 7x6"),
    ("unpatchify", "image_size", lambda a: (-2, 6), ValueError, r"image_size must be positive.*got -2x6"),
    ("unpatchify", "image_size", lambda a: (8, 6, 1), TypeError, r"image_size must be an int or a pair of ints"),
    ("unpatchify", "image_size", lambda a: (8.0, 6), TypeError, r"image_size must be an int or a pair of ints"),
    ("unpatchify", "patch_size", lambda a: "2", TypeError, r"patch_size must be an int, got str"),
    # masked_patchify
    ("masked_patchify", "ids_keep", lambda a: a["ids_keep"].int(), TypeError,
     r"ids_keep must have dtype torch.int64, got torch.int32"),
    ("masked_patchify", "ids_keep", lambda a: a["ids_keep"].float(), TypeError, r"ids_keep must have dtype torch.int64"),
    ("masked_patchify", "ids_keep", lambda a: a["ids_keep"][:1], ValueError, r"ids_keep must have shape \[2, \*\], got \(1, 3\)"),
    ("masked_patchify", "ids_keep", lambda a: a["ids_keep"][0], ValueError, r"ids_keep must have 2 dimensions, got 1"),
    ("masked_patchify", "ids_keep", lambda a: a["ids_keep"].clamp(max=10).index_fill(1, torch.tensor([1]), 12),
     ValueError, r"ids_keep values must be patch indices in \[0, 12\).*got values in \[\d+, 12\]"),
    ("masked_patchify", "ids_keep", lambda a: a["ids_keep"].clamp(min=1).index_fill(1, torch.tensor([0]), -1),
     ValueError, r"ids_keep values must be patch indices in \[0, 12\).*got values in \[-1, \d+\]"),
    ("masked_patchify", "ids_keep", lambda a: meta(a["ids_keep"]), ValueError, r"ids_keep must be on cpu .*got meta"),
    ("masked_patchify", "imgs", lambda a: meta(a["imgs"]), ValueError, r"ids_keep must be on meta .*got cpu"),
    ("masked_patchify", "imgs", lambda a: a["imgs"][:, :, :7], ValueError, r"imgs: image size 7x6 must be divisible"),
    ("masked_patchify", "patch_size", lambda a: -2, ValueError, r"patch_size must be a positive int, got -2"),
    ("masked_patchify", "dtype", lambda a: torch.int32, TypeError,
     r"dtype must be None or one of torch.float32, torch.float16, torch.bfloat16, got torch.int32"),
    ("masked_patchify", "imgs", lambda a: {"imgs": a["imgs"].double(), "dtype": torch.bfloat16}, TypeError,
     r"imgs must have dtype torch.float32 or torch.float16 or torch.bfloat16, got torch.float64"),
    # masked_patch_embed
    ("masked_patch_embed", "weight", lambda a: torch.randn(D, C, 2, 3), ValueError,
     r"weight must be a Conv2d patch embedding weight \[D, C, p, p\].*got \(16, 3, 2, 3\)"),
    ("masked_patch_embed", "weight", lambda a: torch.randn(0, C, 2, 2), ValueError,
     r"weight must be a Conv2d patch embedding weight.*got \(0, 3, 2, 2\)"),
    ("masked_patch_embed", "weight", lambda a: torch.randn(D, C, 2), ValueError, r"weight must have 4 dimensions, got 3"),
    ("masked_patch_embed", "weight", lambda a: torch.randn(D, 4, 2, 2), ValueError,
     r"imgs must have shape \[\*, 4\], got \(2, 3, 8, 6\)"),
    ("masked_patch_embed", "weight", lambda a: a["weight"].double(), TypeError,
     r"weight must have dtype torch.float32 or torch.float16 or torch.bfloat16, got torch.float64"),
    ("masked_patch_embed", "weight", lambda a: meta(a["weight"]), ValueError, r"weight must be on cpu .*got meta"),
    ("masked_patch_embed", "imgs", lambda a: a["imgs"].half(), TypeError,
     r"imgs must have dtype torch.float32, got torch.float16"),
    ("masked_patch_embed", "imgs", lambda a: a["imgs"][:, :, :7], ValueError, r"imgs: image size 7x6 must be divisible by patch_size=2"),
    ("masked_patch_embed", "imgs", lambda a: a["imgs"][0], ValueError, r"imgs must have 4 dimensions, got 3"),
    ("masked_patch_embed", "bias", lambda a: a["bias"][:5], ValueError, r"bias must have shape \[16\], got \(5,\)"),
    ("masked_patch_embed", "bias", lambda a: a["bias"].half(), TypeError, r"bias must have dtype torch.float32, got torch.float16"),
    ("masked_patch_embed", "bias", lambda a: meta(a["bias"]), ValueError, r"bias must be on cpu .*got meta"),
    ("masked_patch_embed", "bias", lambda a: a["bias"][None], ValueError, r"bias must have 1 dimensions, got 2"),
    ("masked_patch_embed", "pos_embed", lambda a: a["pos_embed"][:, 1:], ValueError,
     r"pos_embed must have shape \[1, 13, 16\], got \(1, 12, 16\)"),
    ("masked_patch_embed", "pos_embed", lambda a: a["pos_embed"].long(), TypeError, r"pos_embed must have dtype"),
    ("masked_patch_embed", "pos_embed", lambda a: meta(a["pos_embed"]), ValueError, r"pos_embed must be on cpu .*got meta"),
    ("masked_patch_embed", "pos_embed", lambda a: a["pos_embed"][0], ValueError, r"pos_embed must have 3 dimensions, got 2"),
    ("masked_patch_embed", "ids_keep", lambda a: a["ids_keep"] + 12, ValueError,
     r"ids_keep values must be patch indices in \[0, 12\)"),
    ("masked_patch_embed", "ids_keep", lambda a: a["ids_keep"].int(), TypeError, r"ids_keep must have dtype torch.int64"),
    ("masked_patch_embed", "ids_keep", lambda a: meta(a["ids_keep"]), ValueError, r"ids_keep must be on cpu .*got meta"),
    # tube_mask_indices
    ("tube_mask_indices", "N", lambda a: 0, ValueError, r"N must be a positive int, got 0"),
    ("tube_mask_indices", "t", lambda a: 2.0, TypeError, r"t must be an int, got float"),
    ("tube_mask_indices", "t", lambda a: 0, ValueError, r"t must be a positive int, got 0"),
    ("tube_mask_indices", "hw", lambda a: True, TypeError, r"hw must be an int, got bool"),
    ("tube_mask_indices", "mask_ratio", lambda a: 1.0, ValueError, r"mask_ratio must be in \[0, 1\), got 1.0"),
    ("tube_mask_indices", "mask_ratio", lambda a: "0.9", TypeError, r"mask_ratio must be a Python float"),
    ("tube_mask_indices", "noise", lambda a: torch.rand(2, 7), ValueError, r"noise must have shape \[2, 6\], got \(2, 7\)"),
    ("tube_mask_indices", "noise", lambda a: torch.rand(2, 6).half(), TypeError, r"noise must have dtype torch.float32"),
    ("tube_mask_indices", "noise", lambda a: dict(noise=torch.rand(2, 6, device=META), device="cpu"), ValueError,
     r"noise must be on cpu .*got meta"),
    ("tube_mask_indices", "generator", lambda a: "seed", TypeError, r"generator must be a torch.Generator or None, got str"),
    # decoder_mask_indices
    ("decoder_mask_indices", "mask_type", lambda a: "tube", ValueError, r"mask_type must be one of \('run_cell', 'random'\), got 'tube'"),
    ("decoder_mask_indices", "mask_ratio", lambda a: 0.1, ValueError, r"int\(4 \* mask_ratio\) in 1..3.*got mask_ratio=0.1"),
    ("decoder_mask_indices", "h", lambda a: 3, ValueError, r"h and w must be even for running cells.*got h=3, w=4"),
    ("decoder_mask_indices", "w", lambda a: 0, ValueError, r"w must be a positive int, got 0"),
    ("decoder_mask_indices", "start", lambda a: torch.tensor([0, 1, 2]), ValueError, r"start must have shape \[2\], got \(3,\)"),
    ("decoder_mask_indices", "start", lambda a: torch.tensor([0.0, 1.0]), TypeError, r"start must have dtype torch.int64"),
    ("decoder_mask_indices", "start", lambda a: torch.tensor([0, 5]), RuntimeError, r"start values must be in 0..3"),
    ("decoder_mask_indices", "noise", lambda a: torch.rand(2, 16), ValueError, r"noise is for mask_type='random'"),
    ("decoder_mask_indices", "generator", lambda a: 1, TypeError, r"generator must be a torch.Generator or None, got int"),
    ("decoder_mask_indices", "scope", lambda a: "visible", ValueError, r"scope must be one of \('all', 'removed'\), got 'visible'"),
    ("decoder_mask_indices", "scope", lambda a: "removed", ValueError, r"scope='removed' decodes encoder-removed positions only: pass encoder_mask"),
    ("decoder_mask_indices", "encoder_mask", lambda a: torch.ones(2, 16, dtype=torch.bool), ValueError,
     r"encoder_mask and num_removed are for scope='removed'"),
    ("decoder_mask_indices", "encoder_mask", lambda a: dict(scope="removed", encoder_mask=torch.ones(2, 15)), ValueError,
     r"encoder_mask must have shape \[2, 16\], got \(2, 15\)"),
    ("decoder_mask_indices", "encoder_mask", lambda a: dict(scope="removed", encoder_mask=torch.ones(2, 16, dtype=torch.int64)),
     TypeError, r"encoder_mask must have dtype"),
    ("decoder_mask_indices", "num_removed", lambda a: dict(scope="removed", encoder_mask=torch.ones(2, 16), num_removed=17),
     ValueError, r"num_removed must be at most L = 16, got 17"),
    ("decoder_mask_indices", "noise", lambda a: dict(scope="removed", encoder_mask=torch.ones(2, 16), noise=torch.rand(2, 8)),
     ValueError, r"noise must have shape \[2, 16\], got \(2, 8\)"),
    # mask_to_indices
    ("mask_to_indices", "bool_mask", lambda a: a["bool_mask"].float(), TypeError,
     r"bool_mask must have dtype torch.bool, got torch.float32"),
    ("mask_to_indices", "bool_mask", lambda a: a["bool_mask"][0], ValueError, r"bool_mask must have 2 dimensions, got 1"),
    ("mask_to_indices", "bool_mask", lambda a: a["bool_mask"].tolist(), TypeError, r"bool_mask must be a torch.Tensor"),
    ("mask_to_indices", "bool_mask", lambda a: dict(bool_mask=torch.arange(L).expand(N, L) >= torch.tensor([[1], [2]]),
                                                    num_kept=None), ValueError,
     r"bool_mask must keep \(hold False in\) the same number of patches in every row, got 1 in row 0 and 2 in row 1"),
    ("mask_to_indices", "num_kept", lambda a: K + 1, RuntimeError,
     r"bool_mask must keep \(hold False in\) num_kept = 4 patches in every row"),
    ("mask_to_indices", "num_kept", lambda a: L + 1, ValueError, r"num_kept must be at most L = 12 .*got 13"),
    ("mask_to_indices", "num_kept", lambda a: 3.0, TypeError, r"num_kept must be an int, got float"),
    # random_masked_patch_embed
    ("random_masked_patch_embed", "weight", lambda a: torch.randn(D, C, 0, 0), ValueError,
     r"weight must be a Conv2d patch embedding weight.*got \(16, 3, 0, 0\)"),
    ("random_masked_patch_embed", "weight", lambda a: torch.randn(D, C, 2, 3), ValueError,
     r"weight must be a Conv2d patch embedding weight"),
    ("random_masked_patch_embed", "weight", lambda a: meta(a["weight"]), ValueError, r"weight must be on cpu .*got meta"),
    ("random_masked_patch_embed", "imgs", lambda a: a["imgs"][0], ValueError, r"imgs must have 4 dimensions, got 3"),
    ("random_masked_patch_embed", "imgs", lambda a: a["imgs"][..., :5], ValueError, r"imgs: image size 8x5 must be divisible"),
    ("random_masked_patch_embed", "mask_ratio", lambda a: "0.75", TypeError, r"mask_ratio must be a Python float"),
    ("random_masked_patch_embed", "mask_ratio", lambda a: 1.0, ValueError, r"mask_ratio must be in \[0, 1\), got 1.0"),
    ("random_masked_patch_embed", "mask_ratio", lambda a: math.nan, ValueError, r"mask_ratio must be in \[0, 1\), got nan"),
    ("random_masked_patch_embed", "noise", lambda a: torch.rand(N, L - 1), ValueError, r"noise must have shape \[2, 12\]"),
    ("random_masked_patch_embed", "noise", lambda a: torch.rand(N, L, device=META), ValueError, r"noise must be on cpu"),
    ("random_masked_patch_embed", "bias", lambda a: a["bias"][:3], ValueError, r"bias must have shape \[16\]"),
    ("random_masked_patch_embed", "pos_embed", lambda a: a["pos_embed"][:, :5], ValueError, r"pos_embed must have shape \[1, 13, 16\]"),
    # append_mask_tokens
    ("append_mask_tokens", "has_cls", lambda a: 0, TypeError, r"has_cls must be a bool, got int"),
    ("append_mask_tokens", "x", lambda a: a["x"].double(), TypeError, r"x must have dtype .*got torch.float64"),
    ("append_mask_tokens", "ids_keep", lambda a: a["ids_keep"][:, :-1], ValueError,
     r"ids_keep must have shape \[2, 3\], got \(2, 2\)"),
    ("append_mask_tokens", "has_cls", lambda a: True, ValueError, r"ids_keep must have shape \[2, 2\], got \(2, 3\)"),
    ("append_mask_tokens", "ids_dec", lambda a: a["ids_dec"].int(), TypeError, r"ids_dec must have dtype torch.int64"),
    ("append_mask_tokens", "ids_dec", lambda a: a["ids_dec"] + L, ValueError,
     r"ids_dec values must be positions in \[0, 12\)"),
    ("append_mask_tokens", "ids_keep", lambda a: a["ids_keep"] - L, ValueError,
     r"ids_keep values must be positions in \[0, 12\)"),
    ("append_mask_tokens", "ids_dec", lambda a: meta(a["ids_dec"]), ValueError, r"ids_dec must be on cpu .*got meta"),
    ("append_mask_tokens", "mask_token", lambda a: torch.randn(1, 1, D + 1), ValueError,
     r"mask_token must have shape \[1, 1, 16\]"),
    ("append_mask_tokens", "pos_embed", lambda a: torch.randn(1, L, D + 1), ValueError,
     r"pos_embed must have shape \[1, \*, 16\]"),
    ("append_mask_tokens", "pos_embed", lambda a: torch.randn(L, D), ValueError, r"pos_embed must have 3 dimensions"),
    ("append_mask_tokens", "out_dtype", lambda a: torch.int64, TypeError, r"out_dtype must be None or one of"),
    # unshuffle_with_mask_tokens
    ("unshuffle_with_mask_tokens", "has_cls", lambda a: 1, TypeError, r"has_cls must be a bool, got int"),
    ("unshuffle_with_mask_tokens", "out_dtype", lambda a: torch.int32, TypeError, r"out_dtype must be None or one of .*torch.int32"),
    ("unshuffle_with_mask_tokens", "out_dtype", lambda a: "float32", TypeError, r"out_dtype must be None or one of .*'float32'"),
    ("unshuffle_with_mask_tokens", "x", lambda a: a["x"].double(), TypeError, r"x must have dtype .*got torch.float64"),
    ("unshuffle_with_mask_tokens", "x", lambda a: torch.randn(N, 1 + L + 1, D), ValueError,
     r"x must have between 1 and 13 rows .*got shape \(2, 14, 16\)"),
    ("unshuffle_with_mask_tokens", "x", lambda a: a["x"][0], ValueError, r"x must have 3 dimensions, got 2"),
    ("unshuffle_with_mask_tokens", "ids_restore", lambda a: a["ids_restore"].int(), TypeError,
     r"ids_restore must have dtype torch.int64, got torch.int32"),
    ("unshuffle_with_mask_tokens", "ids_restore", lambda a: a["ids_restore"][:1], ValueError, r"ids_restore must have shape \[2, \*\]"),
    ("unshuffle_with_mask_tokens", "ids_restore", lambda a: meta(a["ids_restore"]), ValueError, r"ids_restore must be on cpu .*got meta"),
    ("unshuffle_with_mask_tokens", "mask_token", lambda a: torch.randn(1, 1, D + 1), ValueError,
     r"mask_token must have shape \[1, 1, 16\], got \(1, 1, 17\)"),
    ("unshuffle_with_mask_tokens", "mask_token", lambda a: a["mask_token"].long(), TypeError, r"mask_token must have dtype"),
    ("unshuffle_with_mask_tokens", "mask_token", lambda a: meta(a["mask_token"]), ValueError, r"mask_token must be on cpu"),
    ("unshuffle_with_mask_tokens", "pos_embed", lambda a: a["pos_embed"][:, 1:], ValueError, r"pos_embed must have shape \[1, 13, 16\]"),
    ("unshuffle_with_mask_tokens", "pos_embed", lambda a: meta(a["pos_embed"]), ValueError, r"pos_embed must be on cpu"),
    # masked_mse_loss
    ("masked_mse_loss", "pred", lambda a: a["pred"][..., :-1], ValueError, r"pred must have shape \[N=2, L=12 .*P=patch_size\*patch_size\*C=12\], got \(2, 9, 11\)"),
    ("masked_mse_loss", "pred", lambda a: torch.randn(N, L + 1, P), ValueError, r"pred must have at most L=12 rows with ids_shuffle, got 13"),
    ("masked_mse_loss", "pred", lambda a: a["pred"].double(), TypeError, r"pred must have dtype .*got torch.float64"),
    ("masked_mse_loss", "pred", lambda a: meta(a["pred"]), ValueError, r"pred must be on cpu .*got meta"),
    ("masked_mse_loss", "pred", lambda a: a["pred"].tolist(), TypeError, r"pred must be a torch.Tensor"),
    ("masked_mse_loss", "imgs", lambda a: a["imgs"].long(), TypeError, r"imgs must have dtype .*got torch.int64"),
    ("masked_mse_loss", "imgs", lambda a: a["imgs"][0], ValueError, r"imgs must have 4 dimensions \[N, C, H, W\] or 5 \[N, C, T, H, W\], got 3"),
    ("masked_mse_loss", "mask", lambda a: a["mask"][:, :-1], ValueError, r"mask must have shape \[2, 12\], got \(2, 11\)"),
    ("masked_mse_loss", "mask", lambda a: a["mask"].long(), TypeError, r"mask must have dtype .*got torch.int64"),
    ("masked_mse_loss", "mask", lambda a: meta(a["mask"]), ValueError, r"mask must be on cpu .*got meta"),
    ("masked_mse_loss", "patch_size", lambda a: 0, ValueError, r"patch_size must be a positive int, got 0"),
    ("masked_mse_loss", "patch_size", lambda a: 4, ValueError, r"imgs: image size 8x6 must be divisible by patch_size=4"),
    ("masked_mse_loss", "patch_size", lambda a: 2.0, TypeError, r"patch_size must be an int, got float"),
    ("masked_mse_loss", "norm_pix_loss", lambda a: 1, TypeError, r"norm_pix_loss must be a bool, got int"),
    ("masked_mse_loss", "eps", lambda a: -1.0, ValueError, r"eps must be a non-negative float, got -1.0"),
    ("masked_mse_loss", "eps", lambda a: math.nan, ValueError, r"eps must be a non-negative float, got nan"),
    ("masked_mse_loss", "eps", lambda a: "1e-6", TypeError, r"eps must be a non-negative float, got str"),
    ("masked_mse_loss", "ids_shuffle", lambda a: a["ids_shuffle"].int(), TypeError, r"ids_shuffle must have dtype torch.int64"),
    ("masked_mse_loss", "ids_shuffle", lambda a: a["ids_shuffle"][:1], ValueError, r"ids_shuffle must have shape \[2, 12\]"),
    ("masked_mse_loss", "ids_shuffle", lambda a: meta(a["ids_shuffle"]), ValueError, r"ids_shuffle must be on cpu .*got meta"),
    ("masked_mse_loss", "ids_shuffle", lambda a: a["ids_shuffle"] + L, ValueError,
     r"ids_shuffle values must be patch indices in \[0, 12\).*got values in \[\d+, \d+\]"),
    ("masked_mse_loss", "ids_shuffle", lambda a: None, ValueError, r"pred must have L=12 rows .*when ids_shuffle is None, got 9"),
    # masked_mse_loss: the video options (videos [2, 3, 4, 8, 6] with tubelets 2x2x2: L=24, P=24)
    ("masked_mse_loss", "patch_size", lambda a: _video_loss(patch_size=2), TypeError, r"patch_size must be a triple \(u, ph, pw\) .* got 2"),
    ("masked_mse_loss", "per_channel", lambda a: 1, TypeError, r"per_channel must be a bool, got int"),
    ("masked_mse_loss", "per_channel", lambda a: dict(per_channel=True, norm_pix_loss=False), ValueError, r"per_channel=True .* needs norm_pix_loss=True"),
    ("masked_mse_loss", "reduction", lambda a: "sum", ValueError, r"reduction must be one of \('mean', 'none'\), got 'sum'"),
    ("masked_mse_loss", "weight", lambda a: a["mask"][:, :-1], ValueError, r"weight must have shape \[2, 12\], got \(2, 11\)"),
    ("masked_mse_loss", "weight", lambda a: a["mask"].long(), TypeError, r"weight must have dtype .*got torch.int64"),
    ("masked_mse_loss", "weight", lambda a: meta(a["mask"]), ValueError, r"weight must be on cpu .*got meta"),
    ("masked_mse_loss", "pixel_mean", lambda a: (0.5, 0.5), ValueError, r"pixel_mean must have 1 or C=3 values \(one per channel\), got 2"),
    ("masked_mse_loss", "pixel_std", lambda a: "imagenet", TypeError, r"pixel_std must be a float, a sequence of C=3 floats or a tensor of C values, got str"),
    ("masked_mse_loss", "target_frames", lambda a: torch.arange(2), ValueError, r"target_frames selects frames of videos .* imgs must have 5 dimensions, got 4"),
    ("masked_mse_loss", "target_frames", lambda a: _video_loss(target_frames=torch.arange(2).int()), TypeError, r"target_frames must have dtype torch.int64, got torch.int32"),
    ("masked_mse_loss", "target_frames", lambda a: _video_loss(target_frames=torch.arange(3)), ValueError, r"target_frames must hold u' frames for each of the t=2 tubelet positions .*got 3"),
    ("masked_mse_loss", "target_frames", lambda a: _video_loss(target_frames=torch.tensor([0, 4])), ValueError, r"target_frames values must be frame indices in \[0, 4\) \(T = frames of imgs\), got values in \[0, 4\]"),
    ("masked_mse_loss", "target_frames", lambda a: _video_loss(target_frames=meta(torch.arange(2))), ValueError, r"target_frames must be on cpu .*got meta"),
    ("masked_mse_loss", "pred", lambda a: _video_loss(target_frames=torch.arange(2)), ValueError, r"pred must have shape \[N=2, L=24 .*P=u'\*ph\*pw\*C \(u' = target frames per token\)=12\], got \(2, 24, 24\)"),
    ("masked_mse_loss", "imgs", lambda a: _video_loss(imgs=torch.randn(N, C, 4, H, W).requires_grad_(), per_channel=True), ValueError, r"imgs requires grad, but the gradient with respect to imgs exists only for .* pass imgs.detach\(\)"),
    # patch_stats, denormalize_pred
    ("patch_stats", "imgs", lambda a: a["imgs"][0], ValueError, r"imgs must have 4 dimensions"),
    ("patch_stats", "imgs", lambda a: a["imgs"].long(), TypeError, r"imgs must have dtype"),
    ("patch_stats", "patch_size", lambda a: 5, ValueError, r"imgs: image size 8x6 must be divisible by patch_size=5"),
    ("patch_stats", "eps", lambda a: -1e-6, ValueError, r"eps must be a non-negative float"),
    ("patch_stats", "per_channel", lambda a: "yes", TypeError, r"per_channel must be a bool, got str"),
    ("patch_stats", "target_frames", lambda a: torch.arange(2), ValueError, r"target_frames selects frames of videos"),
    ("denormalize_pred", "pixel_mean", lambda a: torch.zeros(2), ValueError, r"pixel_mean must have 1 or C=3 values"),
    ("denormalize_pred", "pred", lambda a: a["pred"][:, :1], ValueError, r"pred must have shape \[2, 12, 12\], got \(2, 1, 12\)"),
    ("denormalize_pred", "pred", lambda a: a["pred"].double(), TypeError, r"pred must have dtype"),
    ("denormalize_pred", "pred", lambda a: meta(a["pred"]), ValueError, r"pred must be on cpu .*got meta"),
    ("denormalize_pred", "patch_size", lambda a: 0, ValueError, r"patch_size must be a positive int"),
    # videos [N, C, T, H, W] with tubelets (u, ph, pw), and rectangular image patches
    ("patchify video", "imgs", lambda a: a["imgs"][:, :, :3], ValueError,
     r"imgs: video size \(T x H x W\) 3x8x6 must be divisible by patch_size=2x2x2 .*got remainders 1 and 0 and 0"),
    ("patchify video", "patch_size", lambda a: (2, 2), TypeError,
     r"patch_size must be a triple \(u, ph, pw\) .*for videos \[N, C, T, H, W\], got \(2, 2\)"),
    ("patchify video", "patch_size", lambda a: (2, 0, 2), ValueError, r"patch_size entries must be a positive int, got 0"),
    ("patchify video", "imgs", lambda a: a["imgs"][:, :, 0], TypeError,
     r"patch_size must be an int or a pair \(ph, pw\) for images \[N, C, H, W\], got \(2, 2, 2\)"),
    ("patchify", "patch_size", lambda a: (2, 4), ValueError, r"imgs: image size 8x6 must be divisible by patch_size=2x4"),
    ("unpatchify video", "image_size", lambda a: (8, 6), TypeError, r"image_size must be a triple of ints \(T, H, W\)"),
    ("unpatchify video", "image_size", lambda a: (3, 8, 6), ValueError,
     r"image_size must be positive and divisible by patch_size=2x2x2, got 3x8x6"),
    ("unpatchify video", "x", lambda a: a["x"][:, 1:], ValueError,
     r"x must have shape \[N, 24, u\*ph\*pw\*C\] for 4x8x6 videos and patch_size=2x2x2 \(C >= 1\), got \(2, 23, 24\)"),
    ("masked_patchify video", "ids_keep", lambda a: a["ids_keep"] + V_L, ValueError,
     r"ids_keep values must be patch indices in \[0, 24\)"),
    ("masked_patch_embed video", "weight", lambda a: torch.randn(D, C, 2, 2), ValueError,
     r"weight must be a Conv3d tubelet embedding weight \[D, C, u, ph, pw\] for videos imgs \[N, C, T, H, W\], "
     r"got \(16, 3, 2, 2\)"),
    ("masked_patch_embed video", "weight", lambda a: torch.randn(D, C, 3, 2, 2), ValueError,
     r"imgs: video size \(T x H x W\) 4x8x6 must be divisible by patch_size=3x2x2"),
    ("masked_patch_embed video", "pos_embed", lambda a: (a["pos_embed"][0], a["pos_embed"][1][:, :1]), ValueError,
     r"pos_embed temporal must have shape \[1, 2, 16\], got \(1, 1, 16\)"),
    ("masked_patch_embed video", "pos_embed", lambda a: torch.randn(1, 23, D), ValueError,
     r"pos_embed must have shape \[1, 24, 16\] \(a table of the L tokens\) or \[1, 25, 16\] \(cls row first\), "
     r"got \(1, 23, 16\)"),
    ("masked_patch_embed", "pos_embed", lambda a: (a["pos_embed"], a["pos_embed"]), TypeError,
     r"pos_embed must be a tensor \[1, 1 \+ L, D\] or None \(the separable \(spatial, temporal\) pair is for videos\)"),
    ("random_masked_patch_embed video", "imgs", lambda a: a["imgs"][:, :, :, :7], ValueError,
     r"imgs: video size \(T x H x W\) 4x7x6 must be divisible by patch_size=2x2x2"),
    ("random_masked_patch_embed video", "weight", lambda a: torch.randn(D, 4, 2, 2, 2), ValueError,
     r"imgs must have shape \[\*, 4\], got \(2, 3, 4, 8, 6\)"),
]


def _call(op, args):
    return getattr(mae_kernels, op.split()[0])(**args)


def _case_id(case):
    op, arg, _, exc, regex = case
    return f"{op}-{arg}-{exc.__name__}-{regex[:30]}"


PUBLIC_OPS = sorted({c[0].split()[0] for c in CASES})
VARIANTS = sorted({c[0] for c in CASES})  # ops and their "<op> video" forms


def test_every_public_op_has_cases():
    ops = set(mae_kernels.__all__) - {"BackendUnavailable", "use_backend", "apply", "unapply", "mae_st_target_frames"}
    assert ops == set(PUBLIC_OPS), ops ^ set(PUBLIC_OPS)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", VARIANTS)
def test_valid_baseline_runs(op, backend):
    """The unmodified arguments of the table are valid: every failure below comes from its one bad value."""
    with mae_kernels.use_backend(backend):
        _call(op, _good(op))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_raises_naming_the_argument(case, backend):
    op, arg, bad, exc, regex = case
    args = _good(op)
    value = bad(args)
    if isinstance(value, dict):
        args.update(value)
    else:
        args[arg] = value
    with mae_kernels.use_backend(backend), pytest.raises(exc, match=regex):
        _call(op, args)


def test_meta_tensors_alone_are_checked_without_reading_data():
    """All-meta inputs reach the reference backend (shapes only): the range checks must not read values."""
    args = {k: meta(v) if isinstance(v, torch.Tensor) else v for k, v in _good("masked_patchify").items()}
    assert mae_kernels.masked_patchify(**args).shape == (N, K, P)
    args = {k: meta(v) if isinstance(v, torch.Tensor) else v for k, v in _good("masked_mse_loss").items()}
    assert mae_kernels.masked_mse_loss(**args).shape == ()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_validation_happens_before_any_backend_is_chosen(case, monkeypatch):
    """No backend (hence no kernel) is reached with bad input: every op module's `select` fails if called."""
    import importlib
    import pkgutil

    import mae_kernels.ops

    def select(op, device_type, *args):
        raise AssertionError(f"{op}: a backend was chosen before the input was validated")

    for info in pkgutil.iter_modules(mae_kernels.ops.__path__):  # every op module
        module = importlib.import_module(f"mae_kernels.ops.{info.name}")
        if hasattr(module, "select"):
            monkeypatch.setattr(module, "select", select)
    op, arg, bad, exc, regex = case
    args = _good(op)
    value = bad(args)
    args.update(value if isinstance(value, dict) else {arg: value})
    with pytest.raises(exc, match=regex):
        _call(op, args)
