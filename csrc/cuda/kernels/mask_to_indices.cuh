// Torch-free CUDA kernel of mask_to_indices, and the block scan tube_mask_indices shares. One block per row:
// each thread counts the kept patches of its segment of the row, a block-wide exclusive prefix sum of the counts
// gives each segment its first kept rank, and each thread walks its segment again writing every patch's rank in
// ids_shuffle = argsort(mask, stable=True) (kept ascending, then masked ascending). No atomics, no sort, any L.
#pragma once
#include <cstdint>

namespace mae_kernels {
namespace cuda {

constexpr int kMaskToIndicesThreads = 256;

// Exclusive prefix sum over the block of one value per thread (Hillis-Steele in scan[base, base + kThreads);
// blockDim.x == kThreads). Every thread must call it; those entries are free again on return.
template <int kThreads, typename Shared>
__device__ __forceinline__ int64_t block_exclusive_sum(int64_t v, Shared scan, int64_t base) {
  const int64_t i = base + threadIdx.x;
  scan[i] = v;
  __syncthreads();
#pragma unroll 1
  for (int off = 1; off < kThreads; off <<= 1) {
    const int64_t add = static_cast<int>(threadIdx.x) >= off ? static_cast<int64_t>(scan[i - off]) : int64_t{0};
    __syncthreads();
    scan[i] = scan[i] + add;
    __syncthreads();
  }
  const int64_t inclusive = scan[i];
  __syncthreads();
  return inclusive - v;
}

// mask: [N, L] bytes (nonzero = masked), strides (smn, sml) in elements; outputs contiguous; seg = ceil(L /
// kThreads) (from the host: no division here). A row whose kept count is not K (rejected by the Python wrapper)
// writes only inside the outputs.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) mask_to_indices_kernel(
    const uint8_t* __restrict__ mask, int64_t smn, int64_t sml, int64_t* __restrict__ ids_keep,
    int64_t* __restrict__ ids_restore, float* __restrict__ out_mask, int64_t L, int64_t K, int64_t seg) {
  __shared__ int64_t scan[kThreads];
  const int64_t n = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(threadIdx.x) * seg < L ? static_cast<int64_t>(threadIdx.x) * seg : L;
  const int64_t end = begin + seg < L ? begin + seg : L;
  const uint8_t* row = mask + n * smn;
  int64_t kept = 0;
  for (int64_t l = begin; l < end; ++l) kept += row[l * sml] == 0 ? 1 : 0;
  int64_t ck = block_exclusive_sum<kThreads>(kept, scan, 0);  // kept patches before `begin`
  for (int64_t l = begin; l < end; ++l) {
    const bool masked = row[l * sml] != 0;
    ids_restore[n * L + l] = masked ? K + (l - ck) : ck;
    out_mask[n * L + l] = masked ? 1.0f : 0.0f;
    if (!masked) {
      if (ck < K) ids_keep[n * K + ck] = l;
      ++ck;
    }
  }
}

}  // namespace cuda
}  // namespace mae_kernels
