// Torch-free CUDA kernel of the patchify family: one thread per patch-vector element, copied as a raw word
// of the element's width (bit-exact for every dtype). ids == nullptr means patch k of each image (K = L).
#pragma once
#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {

// Copies between the image (strides in lay) and the patch vectors [N, K, P] (contiguous); ids: [N, K] int64 or
// nullptr. kToImage false gathers (src: image, dst: patch vectors); true scatters (src: patch vectors, dst:
// image; only the listed patches are written, nothing else).
template <bool kToImage, typename word>
__global__ void copy_patches_kernel(const word* __restrict__ src, const int64_t* __restrict__ ids, PatchLayout lay,
                                    int64_t N, int64_t K, word* __restrict__ dst) {
  const int64_t P = lay.p * lay.p * lay.C;
  const int64_t total = N * K * P;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / P, j = e % P;  // row (n, k), entry j
    const int64_t l = ids ? ids[i] : i % K;
    const int64_t pixel = lay.offset(i / K, l, j);
    dst[kToImage ? pixel : e] = src[kToImage ? e : pixel];
  }
}

}  // namespace mae_kernels
