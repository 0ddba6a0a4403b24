// Torch-free CUDA kernels of the decoder input (mask-token scatter / unshuffle) and its fused backward.
// c = has_cls (0 or 1), R = c + L output rows per sample, K kept rows. All index arithmetic in int64.
#pragma once
#include <cstdint>

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
// out: [N, R, D] contiguous. Grid-stride over the N * R output rows (blockIdx.x), threads over D.
template <typename x_t, typename out_t>
__global__ void unshuffle_forward_kernel(const x_t* __restrict__ x, int64_t sxn, int64_t sxr, int64_t sxd,
                                         const float* __restrict__ mask_token, const int64_t* __restrict__ ids,
                                         const float* __restrict__ pos, int64_t N, int64_t L, int64_t K,
                                         int64_t D, int64_t c, out_t* __restrict__ out) {
  const int64_t R = c + L;
  for (int64_t i = blockIdx.x; i < N * R; i += gridDim.x) {
    const int64_t n = i / R, j = i % R;
    const int64_t src_row = unshuffle_source_row(ids, n, j, L, K, c);
    const x_t* src = x + n * sxn + src_row * sxr;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float v = src_row >= 0 ? static_cast<float>(src[d * sxd]) : mask_token[d];
      if (pos != nullptr) v += pos[j * D + d];
      out[i * D + d] = static_cast<out_t>(v);
    }
  }
}

// Stage 1 of the backward. grad: [N, R, D] contiguous; grad_x: [N, c + K, D]; grad_pos: [R, D] f32 or
// nullptr; partial: [R, D] f32 (per output row: the sum of its mask-token gradients over the batch).
// Block (blockIdx.x = output row j, grid-stride; blockIdx.y * blockDim.x + threadIdx.x = column d) walks
// the batch: each grad_out element is read once, each grad_x element written once.
template <typename g_t, typename x_t>
__global__ void unshuffle_backward_rows_kernel(const g_t* __restrict__ grad, const int64_t* __restrict__ ids,
                                               int64_t N, int64_t L, int64_t K, int64_t D, int64_t c,
                                               x_t* __restrict__ grad_x, float* __restrict__ grad_pos,
                                               float* __restrict__ partial) {
  const int64_t R = c + L;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t j = blockIdx.x; j < R; j += gridDim.x) {
    float acc_pos = 0.0f, acc_mask = 0.0f;
    for (int64_t n0 = 0; n0 < N; n0 += kSumChunk) {
      float chunk_pos = 0.0f, chunk_mask = 0.0f;
      const int64_t n1 = n0 + kSumChunk < N ? n0 + kSumChunk : N;
      for (int64_t n = n0; n < n1; ++n) {
        const float g = static_cast<float>(grad[(n * R + j) * D + d]);
        const int64_t dst_row = unshuffle_source_row(ids, n, j, L, K, c);
        if (dst_row >= 0) {
          grad_x[(n * (c + K) + dst_row) * D + d] = static_cast<x_t>(g);
        } else {
          chunk_mask += g;
        }
        chunk_pos += g;
      }
      acc_pos += chunk_pos;
      acc_mask += chunk_mask;
    }
    if (grad_pos != nullptr) grad_pos[j * D + d] = acc_pos;
    partial[j * D + d] = acc_mask;
  }
}

// Stage 2: grad_mask[d] = sum over rows j of partial[j, d], in a fixed order (deterministic).
__global__ void unshuffle_backward_mask_sum_kernel(const float* __restrict__ partial, int64_t R, int64_t D,
                                                   float* __restrict__ grad_mask) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  float s = 0.0f;
  for (int64_t j0 = 0; j0 < R; j0 += kSumChunk) {
    float chunk = 0.0f;
    const int64_t j1 = j0 + kSumChunk < R ? j0 + kSumChunk : R;
    for (int64_t j = j0; j < j1; ++j) chunk += partial[j * D + d];
    s += chunk;
  }
  grad_mask[d] = s;
}

}  // namespace cuda
}  // namespace mae_kernels
