// Torch-free CUDA kernel of the masked MSE loss: one block per prediction row (a token). The target patch is
// read straight from imgs [N, C, H, W] or videos [N, C, T, H, W] by strides (a frame table picks the target frames
// of mae_st; pixel_norm un-normalises VideoMAE's input); rows with mask weight 0 read nothing. Passes over the
// row (re-reads hit L1/L2): mean, centred squares (two-pass variance), loss + gradients, then the imgs gradient
// when asked; with per-channel statistics (VideoMAE) the first three passes run once per channel.
// Two one-block kernels frame it: the gradient scale (from mask.sum()) before, the loss total after.
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

// The place of token l's target: its tubelet row ti and the patch corner (y0, x0).
struct TokenPlace {
  int64_t n, ti, y0, x0;
};

// Offset in imgs of patch-vector element i = ((a * ph + pr) * pw + pc) * C + c of the token at `at` (frame
// g.frames[ti * ut + a] with a frame table, else ti * u + a); *dst: its place in a contiguous imgs-shaped gradient,
// *channel: c.
__device__ __forceinline__ int64_t src_offset(const MseLossGeometry& g, const TokenPlace& at, int64_t i,
                                              int64_t* dst, int64_t* channel) {
  int64_t c, pc, pr;
  const int64_t a = g.div_ph.divmod(g.div_pw.divmod(g.div_C.divmod(i, &c), &pc), &pr);
  const int64_t f = g.frames != nullptr ? g.frames[at.ti * g.ut + a] : at.ti * g.u + a;
  *dst = (((at.n * g.C + c) * g.T + f) * g.H + at.y0 + pr) * g.W + at.x0 + pc;
  *channel = c;
  return at.n * g.s_n + c * g.s_c + f * g.s_t + (at.y0 + pr) * g.s_h + (at.x0 + pc) * g.s_w;
}

// Target pixel of element i in fp32, un-normalised (x * std[c] + mean[c]) when g.pixel_norm is set.
template <typename img_t>
__device__ __forceinline__ float load_target(const MseLossGeometry& g, const img_t* __restrict__ imgs,
                                             const TokenPlace& at, int64_t i, int64_t* dst) {
  int64_t c;
  const float x = static_cast<float>(imgs[src_offset(g, at, i, dst, &c)]);
  return g.pixel_norm != nullptr ? x * g.pixel_norm[c] + g.pixel_norm[g.C + c] : x;
}

// scale[0] = 2 * grad_loss / (P * sum(mask)), 0 when the sum is 0 (grad_loss: [1] float32, or null for 1).
// One block; mask: [count] float32. The sum is taken in a fixed order (deterministic).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) masked_mse_scale_kernel(const float* __restrict__ mask, int64_t count,
                                                                    int64_t P, const float* __restrict__ grad_loss,
                                                                    float* __restrict__ scale) {
  __shared__ float shared[kThreads / 32];
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) s += mask[i];
  const float total = block_sum<kThreads>(s, shared);
  if (threadIdx.x == 0) {
    const double g = grad_loss != nullptr ? static_cast<double>(*grad_loss) : 1.0;
    scale[0] = total != 0.0f ? static_cast<float>(2.0 * g / (static_cast<double>(P) * total)) : 0.0f;
  }
}

// loss[0] = sum(partial) * scale[0] / 2 = sum / (P * mask.sum()). One block; partial: [rows] float32, summed in
// a fixed order (deterministic).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) masked_mse_total_kernel(const float* __restrict__ partial, int64_t rows,
                                                                    const float* __restrict__ scale,
                                                                    float* __restrict__ loss) {
  __shared__ float shared[kThreads / 32];
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < rows; i += kThreads) s += partial[i];
  const float total = block_sum<kThreads>(s, shared);
  if (threadIdx.x == 0) loss[0] = total * (scale[0] * 0.5f);
}

// pred: [N, R, P] strides (g.pred_sn, g.pred_sr, 1); imgs: [N, C, T, H, W] strided (images: T = 1); mask: [N, L]
// float32 (each token's loss weight); ids: [N, R] int64 strides (g.ids_sn, 1) or null (row j is token j); scale:
// [1] float32, 2 * grad_loss / (P * mask.sum()) or 0 (masked_mse_scale_kernel), or 2 / P for per-token losses.
// Outputs (each may be null): partial [N * R] float32; grad_pred [N, R, P] contiguous; grad_imgs [N, C, T, H, W]
// contiguous, zero-filled (all-channel or raw target of the tubelet's own frames only). Grid: N * R blocks of
// kThreads threads.
template <typename pred_t, typename img_t, int kThreads>
__global__ void __launch_bounds__(kThreads) masked_mse_rows_kernel(
    MseLossGeometry g, const pred_t* __restrict__ pred, const img_t* __restrict__ imgs,
    const float* __restrict__ mask, const int64_t* __restrict__ ids, const float* __restrict__ scale_ptr,
    float* __restrict__ partial, pred_t* __restrict__ grad_pred, img_t* __restrict__ grad_imgs) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  int64_t r;
  const int64_t n = g.div_R.divmod(row, &r);
  const int64_t l = ids != nullptr ? ids[n * g.ids_sn + r] : r;
  const bool valid = l >= 0 && l < g.L;  // validated in Python; never read out of bounds even if not
  const float w = valid ? mask[n * g.L + l] : 0.0f;
  const pred_t* y = pred + n * g.pred_sn + r * g.pred_sr;
  const int64_t P = g.P;
  if (w == 0.0f) {  // kept patch: nothing to read, zero gradient
    if (partial != nullptr && threadIdx.x == 0) partial[row] = 0.0f;
    if (grad_pred != nullptr) {
      for (int64_t i = threadIdx.x; i < P; i += kThreads) grad_pred[row * P + i] = pred_t(0.0f);
    }
    return;
  }
  int64_t s, grid_x;
  TokenPlace at;
  at.n = n;
  at.ti = g.div_hw.divmod(l, &s);
  at.y0 = g.div_w_patches.divmod(s, &grid_x) * g.ph;
  at.x0 = grid_x * g.pw;
  int64_t dst;
  const float gscale = w * *scale_ptr;
  float loss = 0.0f;
  if (g.norm && g.per_channel) {
    // Channel by channel over its Q = P / C elements i = k * C + c: (v - mean) / (sqrt(unbiased var) + eps).
    const int64_t C = g.C, Q = g.div_C.div(P);
#pragma unroll 1
    for (int64_t c = 0; c < C; ++c) {
      const float shift = load_target(g, imgs, at, c, &dst);  // exact sums for large offsets
      float sum = 0.0f;
#pragma unroll 1
      for (int64_t k = threadIdx.x; k < Q; k += kThreads) sum += load_target(g, imgs, at, k * C + c, &dst) - shift;
      const float mean = shift + block_sum<kThreads>(sum, shared) / static_cast<float>(Q);
      float sq = 0.0f;
#pragma unroll 1
      for (int64_t k = threadIdx.x; k < Q; k += kThreads) {
        const float xc = load_target(g, imgs, at, k * C + c, &dst) - mean;
        sq += xc * xc;
      }
      const float denom = sqrtf(block_sum<kThreads>(sq, shared) / static_cast<float>(Q - 1)) + g.eps;
#pragma unroll 1
      for (int64_t k = threadIdx.x; k < Q; k += kThreads) {
        const int64_t i = k * C + c;
        const float diff = static_cast<float>(y[i]) - (load_target(g, imgs, at, i, &dst) - mean) / denom;
        loss += diff * diff;
        if (grad_pred != nullptr) grad_pred[row * P + i] = static_cast<pred_t>(diff * gscale);
      }
    }
    if (partial != nullptr) {
      loss = block_sum<kThreads>(loss, shared);
      if (threadIdx.x == 0) partial[row] = w * loss;
    }
    return;
  }
  float mean = 0.0f, std_ = 1.0f;
  if (g.norm) {
    const float shift = load_target(g, imgs, at, 0, &dst);  // exact for large offsets
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < P; i += kThreads) sum += load_target(g, imgs, at, i, &dst) - shift;
    mean = shift + block_sum<kThreads>(sum, shared) / static_cast<float>(P);
    float sq = 0.0f;
    for (int64_t i = threadIdx.x; i < P; i += kThreads) {
      const float xc = load_target(g, imgs, at, i, &dst) - mean;
      sq += xc * xc;
    }
    std_ = sqrtf(block_sum<kThreads>(sq, shared) / static_cast<float>(P - 1) + g.eps);
  }
  float sum_d = 0.0f, sum_dt = 0.0f;
  for (int64_t i = threadIdx.x; i < P; i += kThreads) {
    const float x = load_target(g, imgs, at, i, &dst);
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
      const float x = load_target(g, imgs, at, i, &dst);
      const float t = (x - mean) / std_;
      const float d = -(static_cast<float>(y[i]) - t) * gscale;
      grad_imgs[dst] = static_cast<img_t>((d - mean_d - t * dt) / std_);
    }
  }
}

}  // namespace cuda
}  // namespace mae_kernels
