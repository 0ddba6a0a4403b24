// The op schemas of mae_kernels (one block, the single source of truth for every compiled op) and the
// pybind11 module mae_kernels._C, which only exposes how the extension was built.
// Kernels register themselves per backend in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu;
// fake (meta) kernels and autograd are registered in Python (mae_kernels/ops/<op>.py).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(mae_kernels, m) {
  // random masking: per-row argsort of noise (ties: lower index first), gather of the kept rows of x.
  // noise may be None on CUDA only (Philox numbers drawn in the kernel from seed/offset).
  m.def("random_masking(Tensor x, Tensor? noise, int len_keep, int seed, int offset) -> "
        "(Tensor x_masked, Tensor mask, Tensor ids_restore, Tensor ids_keep)");
  m.def("random_masking_backward(Tensor grad_x_masked, Tensor ids_keep, int L) -> Tensor");
  // mask indices from a boolean mask [N, L] (True = masked, any strides; read as bytes, nonzero = True):
  // kept patches in ascending index, then the masked ones ascending (ids_shuffle = argsort(mask, stable=True)),
  // num_kept kept per row (rows with another count are rejected in Python before the kernel; the kernel stays
  // in bounds regardless) -> (ids_keep [N, num_kept], ids_restore [N, L], mask [N, L] float32 1 = removed).
  m.def("mask_to_indices(Tensor bool_mask, int num_kept) -> (Tensor ids_keep, Tensor ids_restore, Tensor mask)");
  // tube masking (VideoMAE): like [N, hw, 0] gives N, hw and the device; per sample the hw - num_masked spatial
  // positions of smallest noise [N, hw] (or Philox from seed/offset when None, CUDA only) are kept in all t
  // frames; outputs as mask_to_indices with L = t * hw, num_kept = t * (hw - num_masked).
  m.def("tube_mask_indices(Tensor like, Tensor? noise, int t, int num_masked, int seed, int offset) -> "
        "(Tensor ids_keep, Tensor ids_restore, Tensor mask)");
  // patchify family: gathers / scatters between images [N, C, H, W] or videos [N, C, T, H, W] (any strides) and
  // patch vectors [N, K, u*ph*pw*C] in (frame, p_row, p_col, c) order; patch_size = [u, ph, pw] (u = 1 for
  // images), image_size = [H, W] or [T, H, W]; masked_* take the K kept patch indices ids_keep [N, K] int64.
  // masked_patchify's dtype (None: imgs') rounds each read pixel to it (fp32 / fp16 / bf16, round to nearest
  // even): masked_patch_embed's autocast gather reads fp32 pixels and writes GEMM-dtype patches in one pass.
  m.def("patchify(Tensor imgs, int[] patch_size) -> Tensor");
  m.def("unpatchify(Tensor x, int[] patch_size, int[] image_size) -> Tensor");
  m.def("masked_patchify(Tensor imgs, Tensor ids_keep, int[] patch_size, ScalarType? dtype=None) -> Tensor");
  m.def("masked_patchify_backward(Tensor grad, Tensor ids_keep, int[] patch_size, int[] image_size) -> Tensor");
  // masked patch embedding: Conv2d (weight [D, C, ph, pw]) or Conv3d (weight [D, C, u, ph, pw]) patch embedding
  // of the kept patches only, + positional rows when given -> [N, K, D]: pos_temporal None: pos_embed [1, R, D]
  // with R = L or 1 + L (a leading cls row skipped), row R - L + ids_keep; else the separable pair
  // pos_embed [1, h*w, D] (spatial) and pos_temporal [1, t, D]: spatial[l % hw] + temporal[l / hw].
  // Backward composes masked_patchify(_backward) + GEMMs.
  m.def("masked_patch_embed(Tensor imgs, Tensor ids_keep, Tensor weight, Tensor bias, Tensor? pos_embed, "
        "Tensor? pos_temporal=None) -> Tensor");
  // its backward's one pass over grad [N, K, D] (any strides): gemm_grad [N * K, D] contiguous in gemm_dtype
  // (written when write_gemm_grad, else [0, D]) and grad_bias [D] in bias_dtype, the fp32 column sums in the fixed
  // order of csrc/masked_patch_embed_bias_grad.h (deterministic, the same bits on every backend).
  m.def("masked_patch_embed_bias_grad(Tensor grad, ScalarType gemm_dtype, bool write_gemm_grad, "
        "ScalarType bias_dtype) -> (Tensor gemm_grad, Tensor grad_bias)");
  // decoder input: out[n, c + l] = (ids_restore[n, l] < K ? x[n, c + ids_restore[n, l]] : mask_token)
  // (+ pos_embed), c = has_cls (cls row copied); computed in fp32, rounded once to out_dtype.
  m.def("unshuffle_with_mask_tokens(Tensor x, Tensor mask_token, Tensor ids_restore, Tensor? pos_embed, "
        "bool has_cls, ScalarType out_dtype) -> Tensor");
  // its backward, fused: grad_x (x_dtype; gather), grad_mask_token [1, 1, D] and grad_pos_embed
  // [1, c + L, D] (empty unless pos_grad) in fp32, by deterministic two-stage reductions.
  m.def("unshuffle_with_mask_tokens_backward(Tensor grad_out, Tensor ids_restore, int K, bool has_cls, "
        "ScalarType x_dtype, bool pos_grad) -> (Tensor grad_x, Tensor grad_mask_token, Tensor grad_pos_embed)");
  // decoder input with dual masking (VideoMAE v2): out = cat([x, mask_token x M]) + pos_embed at each row's
  // position (cls row: pos row 0; kept row k: 1 + ids_keep[n, k]; mask row m: 1 + ids_dec[n, m]; without cls no
  // 1 +), computed in fp32 and rounded once to out_dtype. Its backward is unshuffle_with_mask_tokens_backward.
  m.def("append_mask_tokens(Tensor x, Tensor mask_token, Tensor ids_keep, Tensor ids_dec, Tensor? pos_embed, "
        "bool has_cls, ScalarType out_dtype) -> Tensor");
  // masked MSE loss (mask float32 [N, L], each token's loss weight; pred row j is token ids_rows[n, j], or token j
  // when ids_rows is None; imgs [N, C, H, W] or [N, C, T, H, W]; patch_size [u, ph, pw], an int p broadcasts, u
  // ignored for images; target_frames [t * u'] int64: the frames token ti targets; pixel_norm [2, C] float32: the
  // target reads x * row 0 + row 1; per_channel: VideoMAE's per-patch-per-channel statistics; per_token: the loss
  // is w * l per token, [N, L]): (loss, d loss / d pred for grad_loss = 1 (ones), or empty); the backward op
  // recomputes for imgs. ops/masked_mse_loss.py documents the maths.
  m.def("masked_mse_loss(Tensor pred, Tensor imgs, Tensor mask, Tensor? ids_rows, int[3] patch_size, "
        "bool norm_pix_loss, float eps, bool with_grad, Tensor? target_frames=None, Tensor? pixel_norm=None, "
        "bool per_channel=False, bool per_token=False) -> (Tensor loss, Tensor grad_pred)");
  m.def("masked_mse_loss_backward(Tensor grad_loss, Tensor pred, Tensor imgs, Tensor mask, Tensor? ids_rows, "
        "int[3] patch_size, bool norm_pix_loss, float eps, bool need_pred, bool need_imgs, "
        "Tensor? target_frames=None, Tensor? pixel_norm=None, bool per_channel=False, bool per_token=False) -> "
        "(Tensor grad_pred, Tensor grad_imgs)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "mae_kernels compiled extension: CPU (and CUDA) kernels registered under torch.ops.mae_kernels";
  m.def("build_info", []() {
    py::dict d;
    d["torch_version"] = MAE_KERNELS_TORCH_VERSION;
#ifdef MAE_KERNELS_WITH_CUDA
    d["with_cuda"] = true;
#else
    d["with_cuda"] = false;
#endif
    d["cuda_archs"] = MAE_KERNELS_CUDA_ARCHS;
    return d;
  });
}
