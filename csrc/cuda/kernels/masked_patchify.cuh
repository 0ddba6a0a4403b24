// Torch-free CUDA kernel of the patchify family: one thread per patch-vector element, copied as a raw word
// of the element's width (bit-exact for every dtype). ids == nullptr means patch k of each image (K = L).
#pragma once
#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {

// Copies between the image (strides in lay) and the patch vectors [N, K, P] (contiguous); ids: [N, K] int64 or
// nullptr. kToImage false gathers (src: image, dst: patch vectors); true scatters (src: patch vectors, dst:
// image; only the listed patches are written, nothing else). div_P and div_K divide by P and K. Each thread
// copies elements e, e + stride, ... for `steps` = ceil(total / stride) steps: a trip count known before the
// loop, so that unrolling it (several loads in flight) needs no division.
template <bool kToImage, typename word>
__global__ void copy_patches_kernel(const word* __restrict__ src, const int64_t* __restrict__ ids, PatchLayout lay,
                                    FastDivmod div_P, FastDivmod div_K, int64_t total, int64_t steps,
                                    word* __restrict__ dst) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t step = 0; step < steps; ++step, e += stride) {
    if (e >= total) break;
    int64_t j, k;
    const int64_t i = div_P.divmod(e, &j);  // row (n, k), entry j
    const int64_t n = div_K.divmod(i, &k);
    const int64_t pixel = lay.offset(n, ids ? ids[i] : k, j);
    dst[kToImage ? pixel : e] = src[kToImage ? e : pixel];
  }
}

}  // namespace mae_kernels
