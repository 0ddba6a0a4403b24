// Where the masked MSE loss reads: shared by the CPU loop and the CUDA kernel (torch-free, so that
// kernels/masked_mse_loss.cuh can take it by value).
#pragma once
#include <cstdint>

#include "fast_divmod.h"

namespace mae_kernels {

struct MseLossGeometry {
  int64_t N, R, L, P, C, p, H, W, w_patches;  // pred [N, R, P], mask [N, L], imgs [N, C, H, W], patches per row
  int64_t s_n, s_c, s_h, s_w;                 // imgs strides (elements)
  int64_t pred_sn, pred_sr;                   // pred strides of samples and rows (entries contiguous)
  int64_t ids_sn;                             // ids_rows sample stride (rows contiguous), 0 without ids
  FastDivmod div_R, div_C, div_p, div_w_patches;  // the divisions of the index math (no division instruction)
  bool norm;
  float eps;
};

// Filled from pred [N, R, P] (last dimension contiguous), imgs [N, C, H, W], mask [N, L] and ids_rows [N, R]
// (last dimension contiguous) or null; a template on the tensor type (at::Tensor) so that this header needs no
// torch include.
template <typename Tensor>
MseLossGeometry mse_loss_geometry(const Tensor& pred, const Tensor& imgs, const Tensor& mask, const Tensor* ids,
                                  int64_t patch_size, bool norm, double eps) {
  MseLossGeometry g;
  g.N = pred.size(0);
  g.R = pred.size(1);
  g.P = pred.size(2);
  g.L = mask.size(1);
  g.C = imgs.size(1);
  g.H = imgs.size(2);
  g.W = imgs.size(3);
  g.p = patch_size;
  g.w_patches = g.W / patch_size;
  g.s_n = imgs.stride(0);
  g.s_c = imgs.stride(1);
  g.s_h = imgs.stride(2);
  g.s_w = imgs.stride(3);
  g.pred_sn = pred.stride(0);
  g.pred_sr = pred.stride(1);
  g.ids_sn = ids != nullptr ? ids->stride(0) : 0;
  g.div_R = FastDivmod(g.R);
  g.div_C = FastDivmod(g.C);
  g.div_p = FastDivmod(g.p);
  g.div_w_patches = FastDivmod(g.w_patches);
  g.norm = norm;
  g.eps = static_cast<float>(eps);
  return g;
}

}  // namespace mae_kernels
