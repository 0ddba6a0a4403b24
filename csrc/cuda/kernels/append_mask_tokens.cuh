// Torch-free CUDA kernel of the decoder input with dual masking (VideoMAE v2): kept rows copied, mask-token rows
// appended, each + the pos_embed row of its position. c = has_cls, R = c + K + M rows per sample; int64 indices.
#pragma once
#include <cstdint>

#include "fast_divmod.h"

namespace mae_kernels {
namespace cuda {

// x: [N, c + K, D] strides (sxn, sxr, sxd); mask_token: [D] f32; ids_keep [N, K], ids_dec [N, M] contiguous
// positions in [0, L) (range-checked by the caller); pos: [c + L, D] f32 or nullptr; out: [N, R, D] contiguous;
// div_R divides by R. Grid-stride over the N * R output rows (blockIdx.x), threads over D.
template <typename x_t, typename out_t>
__global__ void append_mask_tokens_kernel(const x_t* __restrict__ x, int64_t sxn, int64_t sxr, int64_t sxd,
                                          const float* __restrict__ mask_token, const int64_t* __restrict__ ids_keep,
                                          const int64_t* __restrict__ ids_dec, const float* __restrict__ pos,
                                          int64_t N, int64_t K, int64_t M, int64_t D, int64_t c, FastDivmod div_R,
                                          int64_t rows, out_t* __restrict__ out) {
#pragma unroll 1  // the trip count would need a 64-bit division
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    int64_t j;
    const int64_t n = div_R.divmod(i, &j);
    const bool from_x = j < c + K;
    const x_t* src = x + n * sxn + j * sxr;
    const float* p = nullptr;
    if (pos != nullptr) {
      const int64_t at = j < c ? 0 : c + (from_x ? ids_keep[n * K + j - c] : ids_dec[n * M + j - c - K]);
      p = pos + at * D;
    }
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float v = from_x ? static_cast<float>(src[d * sxd]) : mask_token[d];
      if (p != nullptr) v += p[d];
      out[i * D + d] = static_cast<out_t>(v);
    }
  }
}

}  // namespace cuda
}  // namespace mae_kernels
