// Torch-free CUDA kernels of the patchify family: one thread per patch-vector element, copied as a raw word
// of the element's width (bit-exact for every dtype). ids == nullptr means patch k of each image (K = L).
#pragma once
#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {

// img: image with the strides in lay; ids: [N, K] int64 or nullptr; out: [N, K, P] contiguous.
template <typename word>
__global__ void gather_patches_kernel(const word* __restrict__ img, const int64_t* __restrict__ ids, PatchLayout lay,
                                      int64_t N, int64_t K, word* __restrict__ out) {
  const int64_t P = lay.p * lay.p * lay.C;
  const int64_t total = N * K * P;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / P, j = e % P;  // row (n, k), entry j
    const int64_t l = ids ? ids[i] : i % K;
    out[e] = img[lay.offset(i / K, l, j)];
  }
}

// src: [N, K, P] contiguous; img: image with the strides in lay (the kept patches are written, nothing else).
template <typename word>
__global__ void scatter_patches_kernel(const word* __restrict__ src, const int64_t* __restrict__ ids, PatchLayout lay,
                                       int64_t N, int64_t K, word* __restrict__ img) {
  const int64_t P = lay.p * lay.p * lay.C;
  const int64_t total = N * K * P;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / P, j = e % P;
    const int64_t l = ids ? ids[i] : i % K;
    img[lay.offset(i / K, l, j)] = src[e];
  }
}

}  // namespace mae_kernels
