// Torch-free CUDA kernel of the masked MSE loss: one block per prediction row (a patch). The target patch is
// read straight from imgs by strides; rows with mask weight 0 read nothing. Passes over the row (re-reads hit
// L1/L2): mean, centred squares (two-pass variance), loss + gradients, then the imgs gradient when asked.
// The maths is in mae_kernels/triton/masked_mse_loss.py's docstring. All reductions are block-local and
// deterministic (one partial per row, summed afterwards).
#pragma once

#include <cstdint>

#include "masked_mse_loss_geometry.h"

namespace mae_kernels {
namespace cuda {

// Sum over the block, returned to every thread. `shared` holds one float per warp; kThreads % 32 == 0.
// (Shared is float*; the CUDA emulator of tests/cuda_emulation passes its checked shared array instead.)
template <int kThreads, typename Shared>
__device__ __forceinline__ float block_sum(float v, Shared shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int k = 0; k < kThreads / 32; ++k) total += shared[k];  // same order in every thread: deterministic
  return total;
}

// Offset in imgs of patch-vector element i = (pr * p + pc) * C + c of the patch at (y0, x0) of sample n.
__device__ __forceinline__ int64_t src_offset(const MseLossGeometry& g, int64_t n, int64_t y0, int64_t x0,
                                              int64_t i, int64_t* dst) {
  // 32-bit division (P < 2^31, checked by the launcher), 64-bit addresses.
  const int ii = static_cast<int>(i), C = static_cast<int>(g.C), p = static_cast<int>(g.p);
  const int64_t c = ii % C, pc = (ii / C) % p, pr = ii / (p * C);
  *dst = ((n * g.C + c) * g.H + y0 + pr) * g.W + x0 + pc;  // in a contiguous [N, C, H, W] gradient
  return n * g.s_n + c * g.s_c + (y0 + pr) * g.s_h + (x0 + pc) * g.s_w;
}

// pred: [N, R, P] contiguous; imgs: [N, C, H, W] strided; mask: [N, L] float32; ids: [N, R] int64 or null
// (row j is patch j); scale: [1] float32, 2 * grad_loss / (P * mask.sum()) or 0.
// Outputs (each may be null): partial [N * R] float32; grad_pred [N, R, P]; grad_imgs [N, C, H, W]
// contiguous, zero-filled. Grid: N * R blocks of kThreads threads.
template <typename pred_t, typename img_t, int kThreads>
__global__ void __launch_bounds__(kThreads) masked_mse_rows_kernel(
    MseLossGeometry g, const pred_t* __restrict__ pred, const img_t* __restrict__ imgs,
    const float* __restrict__ mask, const int64_t* __restrict__ ids, const float* __restrict__ scale_ptr,
    float* __restrict__ partial, pred_t* __restrict__ grad_pred, img_t* __restrict__ grad_imgs) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  const int64_t n = row / g.R;
  const int64_t l = ids != nullptr ? ids[row] : row % g.R;
  const bool valid = l >= 0 && l < g.L;  // validated in Python; never read out of bounds even if not
  const float w = valid ? mask[n * g.L + l] : 0.0f;
  const pred_t* y = pred + row * g.P;
  const int64_t P = g.P;
  if (w == 0.0f) {  // kept patch: nothing to read, zero gradient
    if (partial != nullptr && threadIdx.x == 0) partial[row] = 0.0f;
    if (grad_pred != nullptr) {
      for (int64_t i = threadIdx.x; i < P; i += kThreads) grad_pred[row * P + i] = pred_t(0.0f);
    }
    return;
  }
  const int64_t y0 = (l / g.w_patches) * g.p, x0 = (l % g.w_patches) * g.p;
  int64_t dst;
  float mean = 0.0f, std_ = 1.0f;
  if (g.norm) {
    const float shift = static_cast<float>(imgs[src_offset(g, n, y0, x0, 0, &dst)]);  // exact for large offsets
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < P; i += kThreads) {
      s += static_cast<float>(imgs[src_offset(g, n, y0, x0, i, &dst)]) - shift;
    }
    mean = shift + block_sum<kThreads>(s, shared) / static_cast<float>(P);
    float sq = 0.0f;
    for (int64_t i = threadIdx.x; i < P; i += kThreads) {
      const float xc = static_cast<float>(imgs[src_offset(g, n, y0, x0, i, &dst)]) - mean;
      sq += xc * xc;
    }
    std_ = sqrtf(block_sum<kThreads>(sq, shared) / static_cast<float>(P - 1) + g.eps);
  }
  const float gscale = w * *scale_ptr;
  float loss = 0.0f, sum_d = 0.0f, sum_dt = 0.0f;
  for (int64_t i = threadIdx.x; i < P; i += kThreads) {
    const float x = static_cast<float>(imgs[src_offset(g, n, y0, x0, i, &dst)]);
    const float t = g.norm ? (x - mean) / std_ : x;
    const float diff = static_cast<float>(y[i]) - t;
    loss += diff * diff;
    const float d = -diff * gscale;  // d loss / d t
    if (grad_pred != nullptr) grad_pred[row * P + i] = static_cast<pred_t>(-d);
    if (grad_imgs != nullptr && !g.norm) grad_imgs[dst] = static_cast<img_t>(d);
    sum_d += d;
    sum_dt += d * t;
  }
  if (partial != nullptr) {
    loss = block_sum<kThreads>(loss, shared);
    if (threadIdx.x == 0) partial[row] = w * loss;
  }
  if (grad_imgs != nullptr && g.norm) {
    // dx = (d - mean(d) - t * sum(d t) / (P - 1)) / std
    const float mean_d = block_sum<kThreads>(sum_d, shared) / static_cast<float>(P);
    const float dt = block_sum<kThreads>(sum_dt, shared) / static_cast<float>(P - 1);
    for (int64_t i = threadIdx.x; i < P; i += kThreads) {
      const float x = static_cast<float>(imgs[src_offset(g, n, y0, x0, i, &dst)]);
      const float t = (x - mean) / std_;
      const float d = -(static_cast<float>(y[i]) - t) * gscale;
      grad_imgs[dst] = static_cast<img_t>((d - mean_d - t * dt) / std_);
    }
  }
}

}  // namespace cuda
}  // namespace mae_kernels
