// Torch-free CUDA kernel of tube masking (VideoMAE). One block per sample: the spatial noise [hw] (loaded, or
// drawn with random_masking's Philox stream, subsequence n*hw + s) bitonic-sorted as random_masking's keys (ties
// by lower index, NaN last), the hw - m positions of smallest noise kept; a block scan (mask_to_indices.cuh) turns
// the kept flags into ranks in position order, and the t frames are written from them: kept tokens in ascending
// token index, then the masked ones ascending (ids_shuffle = argsort(tube mask, stable=True)).
#pragma once
#include <cstdint>

#include "mask_to_indices.cuh"
#include "random_masking.cuh"

namespace mae_kernels {
namespace cuda {

constexpr int64_t kTubeMaxHW = 4096;  // keys + ranks: 64 KiB of shared memory; ops/tube_mask_indices.py agrees
constexpr int kTubeThreads = 512;

// noise: [N, hw] float32 strides (snn, snh), or null (Philox from seed/offset); outputs contiguous with L = t*hw,
// K = t*(hw - m). Dynamic shared memory: keys [P] (P = next power of two >= hw), ranks [hw], the scan [kThreads]
// (all dynamic: the opt-in above 48 KiB covers dynamic memory only).
// seg = ceil(hw / kThreads) from the host.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) tube_mask_indices_kernel(
    const float* __restrict__ noise, int64_t snn, int64_t snh, int64_t* __restrict__ ids_keep,
    int64_t* __restrict__ ids_restore, float* __restrict__ mask, int64_t hw, int64_t t, int64_t m, int64_t P,
    int64_t seg, uint64_t seed, uint64_t offset) {
  extern __shared__ int64_t smem[];  // [P + hw + kThreads]: sort keys, per position its kept rank or -1 - masked
                                     // rank, the block scan
  const int64_t n = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t kh = hw - m, L = t * hw, K = t * kh;
#pragma unroll 1
  for (int64_t s = tid; s < P; s += kThreads) {
    if (s < hw) {
      const float v = noise != nullptr ? noise[n * snn + s * snh] : philox_uniform(seed, offset, n * hw + s);
      smem[s] = sort_key(v, s);
    } else {
      smem[s] = INT64_MAX;  // padding sorts last
    }
  }
  __syncthreads();
#pragma unroll 1
  for (int64_t k = 2; k <= P; k <<= 1) {  // bitonic sort, ascending (as random_masking_forward_kernel)
#pragma unroll 1
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
#pragma unroll 1
      for (int64_t i = tid; i < P; i += kThreads) {
        const int64_t p = i ^ j;
        if (p > i) {
          const int64_t a = smem[i], b = smem[p];
          const bool up = (i & k) == 0;
          if ((a > b) == up) {
            smem[i] = b;
            smem[p] = a;
          }
        }
      }
      __syncthreads();
    }
  }
#pragma unroll 1
  for (int64_t r = tid; r < hw; r += kThreads) smem[P + (smem[r] & 0xFFFFFFFFLL)] = r < kh ? 1 : 0;  // kept flags
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(tid) * seg < hw ? static_cast<int64_t>(tid) * seg : hw;
  const int64_t end = begin + seg < hw ? begin + seg : hw;
  int64_t kept = 0;
  for (int64_t s = begin; s < end; ++s) kept += smem[P + s];
  int64_t ck = block_exclusive_sum<kThreads>(kept, smem, P + hw);  // kept positions before `begin`
  for (int64_t s = begin; s < end; ++s) {
    if (smem[P + s] != 0) {
      smem[P + s] = ck++;
    } else {
      smem[P + s] = -1 - (s - ck);
    }
  }
  __syncthreads();
#pragma unroll 1
  for (int64_t ti = 0; ti < t; ++ti) {
#pragma unroll 1
    for (int64_t s = tid; s < hw; s += kThreads) {
      const int64_t v = smem[P + s], l = ti * hw + s;
      if (v >= 0) {
        const int64_t r = ti * kh + v;
        ids_keep[n * K + r] = l;
        ids_restore[n * L + l] = r;
        mask[n * L + l] = 0.0f;
      } else {
        ids_restore[n * L + l] = K + ti * m + (-1 - v);
        mask[n * L + l] = 1.0f;
      }
    }
  }
}

}  // namespace cuda
}  // namespace mae_kernels
