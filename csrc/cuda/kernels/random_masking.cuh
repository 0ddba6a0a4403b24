// Torch-free CUDA kernels of random masking. One block per sample row: noise (loaded, or drawn with the same
// Philox4x32-10 stream as the Triton kernel, subsequence = element), a bitonic sort in shared memory of int64 keys
// (order-preserving float bits << 32 | index: ties by lower index, NaN last, -0.0 == +0.0, exactly
// torch.argsort(noise, dim=1, stable=True)), the index outputs, then the kept rows copied as raw words.
#pragma once
#include <cstdint>

namespace mae_kernels {
namespace cuda {

constexpr int64_t kRandomMaskingMaxL = 8192;  // 64 KiB of shared keys; ops/random_masking.py holds the same
constexpr int kRandomMaskingThreads = 512;

// u in [0, 1) from Philox4x32-10, key = seed, counter = (offset / 4 lo32, hi32, subsequence lo32, hi32): first
// output >> 8, times 2^-24. torch's convention (curand_init(seed, subsequence, offset)): the generator's offset
// counts outputs in blocks of 4, so numbers drawn here never reappear in a torch kernel started at a later offset.
__device__ __forceinline__ float philox_uniform(uint64_t seed, uint64_t offset, uint64_t subsequence) {
  const uint64_t block = offset / 4;
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(subsequence), c3 = static_cast<uint32_t>(subsequence >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xCD9E8D57u, c2), lo0 = 0xCD9E8D57u * c2;
    const uint32_t hi1 = __umulhi(0xD2511F53u, c0), lo1 = 0xD2511F53u * c0;
    c0 = hi0 ^ c1 ^ k0;
    c2 = hi1 ^ c3 ^ k1;
    c1 = lo0;
    c3 = lo1;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return static_cast<float>(c0 >> 8) * (1.0f / 16777216.0f);
}

// Zero and NaN are recognised from the bits, not by float compares: a flush-to-zero compare (fast math, or
// Triton's compiled kernels) would make every denormal equal to 0.0 (a tie); the bits keep the order exact.
__device__ __forceinline__ int64_t sort_key(float v, int64_t l) {
  int32_t bits = __float_as_int(v);
  const int32_t magnitude = bits & 0x7FFFFFFF;
  if (magnitude == 0) bits = 0;                    // -0.0 ties with +0.0
  if (magnitude > 0x7F800000) bits = 0x7FFFFFFF;   // NaN (either sign) last
  if (bits < 0) bits ^= 0x7FFFFFFF;                // negative floats: reverse the magnitude order
  return (static_cast<int64_t>(bits) << 32) | l;
}

// Copies `words` words of W from src to dst with the whole block (rows of whole W words).
template <typename W>
__device__ __forceinline__ void copy_row(W* dst, const W* src, int64_t words, int tid, int tstride) {
  for (int64_t i = tid; i < words; i += tstride) dst[i] = src[i];
}

// x: [N, L, D] elements of E bytes, row stride sxl and sample stride sxn in elements, element stride 1
// (the caller makes rows contiguous); noise: [N, L] float32 contiguous or null (Philox from seed/offset);
// outputs contiguous. W is the copy word (16, 8, 4, 2 or 1 bytes), chosen by the caller for alignment.
template <typename W>
__global__ void random_masking_forward_kernel(const char* __restrict__ x, const float* __restrict__ noise,
                                              char* __restrict__ x_masked, float* __restrict__ mask,
                                              int64_t* __restrict__ ids_restore, int64_t* __restrict__ ids_keep,
                                              int64_t L, int64_t K, int64_t row_bytes, int64_t sxn_bytes,
                                              int64_t sxl_bytes, int64_t P, uint64_t seed, uint64_t offset) {
  extern __shared__ int64_t keys[];  // [P], P = next power of two >= L
  const int64_t n = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int64_t l = tid; l < P; l += nt) {
    if (l < L) {
      const float v = noise != nullptr ? noise[n * L + l] : philox_uniform(seed, offset, n * L + l);
      keys[l] = sort_key(v, l);
    } else {
      keys[l] = INT64_MAX;  // padding sorts last
    }
  }
  __syncthreads();
  for (int64_t k = 2; k <= P; k <<= 1) {  // bitonic sort, ascending
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      for (int64_t i = tid; i < P; i += nt) {
        const int64_t p = i ^ j;
        if (p > i) {
          const int64_t a = keys[i], b = keys[p];
          const bool up = (i & k) == 0;
          if ((a > b) == up) {
            keys[i] = b;
            keys[p] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int64_t r = tid; r < L; r += nt) {
    const int64_t idx = keys[r] & 0xFFFFFFFFLL;
    ids_restore[n * L + idx] = r;
    mask[n * L + idx] = r >= K ? 1.0f : 0.0f;
    if (r < K) ids_keep[n * K + r] = idx;
  }
  if (row_bytes == 0) return;
  // Kept rows: one warp per row, words of W.
  const int warp = tid / 32, lane = tid % 32, nwarps = nt / 32;
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(W));
  for (int64_t r = warp; r < K; r += nwarps) {
    const int64_t idx = keys[r] & 0xFFFFFFFFLL;
    copy_row(reinterpret_cast<W*>(x_masked + (n * K + r) * row_bytes),
             reinterpret_cast<const W*>(x + n * sxn_bytes + idx * sxl_bytes), words, lane, 32);
  }
}

// grad: [N, K, D] contiguous rows of row_bytes; ids_keep [N, K]; grad_x [N, L, D]: every row written once
// (the kept ones from grad, the others zero). inv (shared, [L] int32) = rank among the kept, -1 if removed.
template <typename W>
__global__ void random_masking_backward_kernel(const char* __restrict__ grad, const int64_t* __restrict__ ids_keep,
                                               char* __restrict__ grad_x, int64_t L, int64_t K, int64_t row_bytes) {
  extern __shared__ int32_t inv[];
  const int64_t n = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int64_t l = tid; l < L; l += nt) inv[l] = -1;
  __syncthreads();
  for (int64_t k = tid; k < K; k += nt) inv[ids_keep[n * K + k]] = static_cast<int32_t>(k);
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32, nwarps = nt / 32;
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(W));
  for (int64_t l = warp; l < L; l += nwarps) {
    W* dst = reinterpret_cast<W*>(grad_x + (n * L + l) * row_bytes);
    const int64_t k = inv[l];
    if (k >= 0) {
      copy_row(dst, reinterpret_cast<const W*>(grad + (n * K + k) * row_bytes), words, lane, 32);
    } else {
      for (int64_t i = lane; i < words; i += 32) dst[i] = W{};
    }
  }
}

}  // namespace cuda
}  // namespace mae_kernels
