// Torch-free CUDA kernels of the decoder input (mask-token scatter / unshuffle) and its fused backward.
// c = has_cls (0 or 1), R = c + L output rows per sample, K kept rows. All index arithmetic in int64.
#pragma once
#include <cstdint>

#include "fast_divmod.h"

namespace mae_kernels {
namespace cuda {

// Long column sums are taken in chunks of kSumChunk terms (fp32), then the chunk sums are added: rounding
// error grows with kSumChunk + count / kSumChunk instead of count, and the order stays fixed (deterministic).
constexpr int64_t kSumChunk = 32;

// Row j of sample n reads: x row 0 for the cls row, x row c + r when r = ids[n, j - c] is in [0, K),
// else the mask token (-1). Out-of-range ids read the mask token: never an out-of-bounds access.
__device__ __forceinline__ int64_t unshuffle_source_row(const int64_t* ids, int64_t n, int64_t j, int64_t L,
                                                        int64_t K, int64_t c) {
  if (j < c) return 0;
  const int64_t r = ids[n * L + (j - c)];
  return (r >= 0 && r < K) ? c + r : -1;
}

// x: [N, c + K, D] strides (sxn, sxr, sxd); mask_token: [D] f32; ids: [N, L]; pos: [R, D] f32 or nullptr;
// out: [N, R, D] contiguous; div_R divides by R. Grid-stride over the N * R output rows (blockIdx.x), threads
// over D.
template <typename x_t, typename out_t>
__global__ void unshuffle_forward_kernel(const x_t* __restrict__ x, int64_t sxn, int64_t sxr, int64_t sxd,
                                         const float* __restrict__ mask_token, const int64_t* __restrict__ ids,
                                         const float* __restrict__ pos, int64_t N, int64_t L, int64_t K,
                                         int64_t D, int64_t c, FastDivmod div_R, out_t* __restrict__ out) {
  const int64_t R = c + L;
  for (int64_t i = blockIdx.x; i < N * R; i += gridDim.x) {
    int64_t j;
    const int64_t n = div_R.divmod(i, &j);
    const int64_t src_row = unshuffle_source_row(ids, n, j, L, K, c);
    const x_t* src = x + n * sxn + src_row * sxr;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float v = src_row >= 0 ? static_cast<float>(src[d * sxd]) : mask_token[d];
      if (pos != nullptr) v += pos[j * D + d];
      out[i * D + d] = static_cast<out_t>(v);
    }
  }
}

// Stage 1 of the backward, one chunk of kSumChunk samples per blockIdx.z (chunks >= 1 of them): many blocks, each
// thread with up to kSumChunk independent loads. grad: [N, R, D] contiguous; grad_x: [N, c + K, D]; chunk_pos and
// chunk_mask: [chunks, R, D] f32, per chunk and output row the sum of its gradients (all, and the mask-token
// ones). Block: blockIdx.x = output row j (grid-stride), blockIdx.y * blockDim.x + threadIdx.x = column d.
// Each grad_out element is read once, each grad_x element written once.
template <typename g_t, typename x_t>
__global__ void unshuffle_backward_rows_kernel(const g_t* __restrict__ grad, const int64_t* __restrict__ ids,
                                               int64_t N, int64_t L, int64_t K, int64_t D, int64_t c,
                                               int64_t chunks, x_t* __restrict__ grad_x,
                                               float* __restrict__ chunk_pos, float* __restrict__ chunk_mask) {
  const int64_t R = c + L;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t chunk = blockIdx.z; chunk < chunks; chunk += gridDim.z) {
    const int64_t n0 = chunk * kSumChunk, n1 = n0 + kSumChunk < N ? n0 + kSumChunk : N;
    for (int64_t j = blockIdx.x; j < R; j += gridDim.x) {
      float sum_pos = 0.0f, sum_mask = 0.0f;
#pragma unroll 4
      for (int64_t n = n0; n < n1; ++n) {
        const float g = static_cast<float>(grad[(n * R + j) * D + d]);
        const int64_t dst_row = unshuffle_source_row(ids, n, j, L, K, c);
        if (dst_row >= 0) {
          grad_x[(n * (c + K) + dst_row) * D + d] = static_cast<x_t>(g);
        } else {
          sum_mask += g;
        }
        sum_pos += g;
      }
      chunk_pos[(chunk * R + j) * D + d] = sum_pos;
      chunk_mask[(chunk * R + j) * D + d] = sum_mask;
    }
  }
}

// Stage 2: the chunk sums added in chunk order (deterministic), one thread per (j, d): grad_pos [R, D] f32 (or
// nullptr) and partial [R, D] f32, the mask-token gradient of output row j over the batch.
__global__ void unshuffle_backward_chunks_kernel(const float* __restrict__ chunk_pos,
                                                 const float* __restrict__ chunk_mask, int64_t chunks, int64_t R,
                                                 int64_t D, float* __restrict__ grad_pos,
                                                 float* __restrict__ partial) {
  const int64_t RD = R * D;
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < RD; e += int64_t(gridDim.x) * blockDim.x) {
    float sum_pos = 0.0f, sum_mask = 0.0f;
    for (int64_t k = 0; k < chunks; ++k) {
      sum_pos += chunk_pos[k * RD + e];
      sum_mask += chunk_mask[k * RD + e];
    }
    if (grad_pos != nullptr) grad_pos[e] = sum_pos;
    partial[e] = sum_mask;
  }
}

// Stage 3: grad_mask[d] = sum over rows j of partial[j, d], in a fixed order (deterministic): chunks of
// kSumChunk rows summed in order, then the chunk sums in order. One thread per column, one warp per block (D = 512:
// 16 blocks, where 256-thread blocks gave 2); the loads of a chunk are issued together (unrolled), then added.
constexpr int kMaskSumThreads = 32;

__global__ void __launch_bounds__(kMaskSumThreads) unshuffle_backward_mask_sum_kernel(
    const float* __restrict__ partial, int64_t R, int64_t D, float* __restrict__ grad_mask) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  float s = 0.0f;
  for (int64_t j0 = 0; j0 < R; j0 += kSumChunk) {
    float v[kSumChunk];
#pragma unroll
    for (int i = 0; i < kSumChunk; ++i) v[i] = j0 + i < R ? partial[(j0 + i) * D + d] : 0.0f;
    float chunk = 0.0f;
#pragma unroll
    for (int i = 0; i < kSumChunk; ++i) {
      if (j0 + i < R) chunk += v[i];
    }
    s += chunk;
  }
  grad_mask[d] = s;
}

}  // namespace cuda
}  // namespace mae_kernels
