// Where the masked MSE loss reads: shared by the CPU loop and the CUDA kernel (torch-free, so that
// kernels/masked_mse_loss.cuh can take it by value).
#pragma once
#include <cstdint>

#include "fast_divmod.h"

namespace mae_kernels {

// imgs [N, C, T, H, W] (T = 1 for images [N, C, H, W]) cut into u x ph x pw tubelets: token l = (ti * h + hi) * w
// + wi. The target of token l has ut frames (u' of mae_st; ut = u without a frame table) of ph x pw pixels: patch
// vector element i = ((a * ph + pr) * pw + pc) * C + c is pixel (c, frame(ti, a), hi * ph + pr, wi * pw + pc), with
// frame(ti, a) = frames[ti * ut + a] when a frame table is given, else ti * u + a.
struct MseLossGeometry {
  int64_t N, R, L, P, C, T, H, W;     // pred [N, R, P], mask [N, L], imgs [N, C, T, H, W]
  int64_t u, ph, pw, ut, w_patches;   // tubelet frames, patch height and width, target frames, tokens per row
  int64_t s_n, s_c, s_t, s_h, s_w;    // imgs strides (elements)
  int64_t pred_sn, pred_sr;           // pred strides of samples and rows (entries contiguous)
  int64_t ids_sn;                     // ids_rows sample stride (rows contiguous), 0 without ids
  const int64_t* frames;              // [t * ut] target frame of each (ti, a), or null
  const float* pixel_norm;            // [2, C]: the target reads x * pixel_norm[c] + pixel_norm[C + c], or null
  // the divisions of the index math (no division instruction)
  FastDivmod div_R, div_C, div_pw, div_ph, div_w_patches, div_hw;
  bool norm, per_channel;  // per_channel: statistics per patch and channel, (v - mean) / (std + eps)
  float eps;
};

// Filled from pred [N, R, P] (last dimension contiguous), imgs [N, C, H, W] or [N, C, T, H, W], mask [N, L],
// ids_rows [N, R] (last dimension contiguous) or null, frames [t * ut] int64 contiguous or null and pixel_norm
// [2, C] float32 contiguous or null; patch_size [u, ph, pw] (u ignored for 4-D imgs). A template on the tensor
// type (at::Tensor) so that this header needs no torch include.
template <typename Tensor, typename Sizes>
MseLossGeometry mse_loss_geometry(const Tensor& pred, const Tensor& imgs, const Tensor& mask, const Tensor* ids,
                                  const Tensor* frames, const Tensor* pixel_norm, Sizes patch_size, bool norm,
                                  bool per_channel, double eps) {
  const bool video = imgs.dim() == 5;
  MseLossGeometry g;
  g.N = pred.size(0);
  g.R = pred.size(1);
  g.P = pred.size(2);
  g.L = mask.size(1);
  g.C = imgs.size(1);
  g.T = video ? imgs.size(2) : 1;
  g.H = imgs.size(-2);
  g.W = imgs.size(-1);
  g.u = video ? patch_size[0] : 1;
  g.ph = patch_size[1];
  g.pw = patch_size[2];
  g.ut = frames != nullptr ? frames->numel() / (g.T / g.u) : g.u;
  g.w_patches = g.W / g.pw;
  g.s_n = imgs.stride(0);
  g.s_c = imgs.stride(1);
  g.s_t = video ? imgs.stride(2) : 0;
  g.s_h = imgs.stride(-2);
  g.s_w = imgs.stride(-1);
  g.pred_sn = pred.stride(0);
  g.pred_sr = pred.stride(1);
  g.ids_sn = ids != nullptr ? ids->stride(0) : 0;
  g.frames = frames != nullptr ? frames->template const_data_ptr<int64_t>() : nullptr;
  g.pixel_norm = pixel_norm != nullptr ? pixel_norm->template const_data_ptr<float>() : nullptr;
  g.div_R = FastDivmod(g.R);
  g.div_C = FastDivmod(g.C);
  g.div_pw = FastDivmod(g.pw);
  g.div_ph = FastDivmod(g.ph);
  g.div_w_patches = FastDivmod(g.w_patches);
  g.div_hw = FastDivmod((g.H / g.ph) * g.w_patches);
  g.norm = norm;
  g.per_channel = per_channel;
  g.eps = static_cast<float>(eps);
  return g;
}

}  // namespace mae_kernels
