// Torch-free CUDA kernel of the patchify family: one block per patch-vector row (grid-stride), threads over its
// P entries, each copied as a raw word of the element's width (bit-exact for every dtype). ids == nullptr means
// patch k of each image (K = L).
#pragma once
#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {

// Entries whose in-patch offsets a block keeps in shared memory (16 KiB): P = 768 (p 16, C 3), 588 (p 14) and
// 1536 (tubelet 2x16x16, C 3).
constexpr int64_t kPatchOffsetTable = 2048;

// Copies between the image or video (strides in lay) and the patch vectors [N, K, P] (contiguous); ids: [N, K] int64 or
// nullptr; div_K divides by K. kToImage false gathers (src: image, dst: patch vectors); true scatters (src: patch
// vectors, dst: image; only the listed patches are written, nothing else).
// The in-patch offset of each entry is computed once per block (a table in shared memory when P fits, else per
// element), the patch corner once per row and thread: an element costs a shared load, an add and the copy.
template <bool kToImage, typename word, int kThreads>
__global__ void __launch_bounds__(kThreads) copy_patches_kernel(const word* __restrict__ src,
                                                                const int64_t* __restrict__ ids, PatchLayout lay,
                                                                FastDivmod div_K, int64_t rows, int64_t P,
                                                                word* __restrict__ dst) {
  __shared__ int64_t table[kPatchOffsetTable];
  const bool tabled = P <= kPatchOffsetTable;
  if (tabled) {
    for (int64_t j = threadIdx.x; j < P; j += kThreads) table[j] = lay.in_patch(j);
  }
  __syncthreads();
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {  // row (n, k)
    int64_t k;
    const int64_t n = div_K.divmod(i, &k);
    const int64_t corner = lay.corner(n, ids ? ids[i] : k);
    for (int64_t j = threadIdx.x; j < P; j += kThreads) {
      const int64_t pixel = corner + (tabled ? table[j] : lay.in_patch(j));
      const int64_t e = i * P + j;
      dst[kToImage ? pixel : e] = src[kToImage ? e : pixel];
    }
  }
}

}  // namespace mae_kernels
