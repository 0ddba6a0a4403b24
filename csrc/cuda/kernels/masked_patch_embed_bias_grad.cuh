// Torch-free CUDA kernels of masked_patch_embed_bias_grad: one pass over grad [N, K, D] writing the GEMM-dtype copy
// (when asked) and per-chunk fp32 column sums, then the fixed-order sum of the chunks; the order of
// csrc/masked_patch_embed_bias_grad.h (the CPU and Triton kernels add the same numbers in the same order). No
// atomics. All index arithmetic in int64.
#pragma once
#include <cstdint>

#include "fast_divmod.h"
#include "masked_patch_embed_bias_grad.h"

namespace mae_kernels {
namespace cuda {

constexpr int kBiasGradThreads = 256;
constexpr int kBiasFinishCols = 32;                                  // columns per finishing block (threadIdx.x)
constexpr int kBiasFinishLanes = kBiasGradThreads / kBiasFinishCols;  // groups summed at once (threadIdx.y)

// Columns per thread: 16 bytes of the narrower of grad and the copy (fp32 -> bf16: 8, the fp32 loads then two
// 16-byte accesses), or 1 (the scalar fallback for strided or unaligned rows).
template <bool kVector, typename g_t, typename out_t>
constexpr int bias_grad_width() {
  return kVector ? 16 / static_cast<int>(sizeof(g_t) < sizeof(out_t) ? sizeof(g_t) : sizeof(out_t)) : 1;
}

template <typename t, int V>
struct alignas(sizeof(t) * V) BiasGradPack {
  t v[V];
};

// grad: [N, K, D] strides (sn, sk, sd) in elements (kVector: sd == 1; sn, sk and D multiples of V; grad aligned to
// its pack); out: [N * K, D] contiguous (aligned to its pack), or nullptr for no copy; partial: [chunks, D] f32,
// chunks = N * KB (div_kb divides by KB). Block: blockIdx.x = chunk (grid-stride), blockIdx.y * blockDim.x +
// threadIdx.x = the thread's pack of V columns; it walks the chunk's rows in order (unrolled: several loads in
// flight). Each grad element is read once, each copy element written once.
template <bool kVector, typename g_t, typename out_t>
__global__ void __launch_bounds__(kBiasGradThreads)
    bias_grad_rows_kernel(const g_t* __restrict__ grad, int64_t sn, int64_t sk, int64_t sd, int64_t K, int64_t D,
                          FastDivmod div_kb, int64_t chunks, out_t* __restrict__ out, float* __restrict__ partial) {
  constexpr int V = bias_grad_width<kVector, g_t, out_t>();
  const int64_t d = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (d >= D) return;
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    int64_t kb;
    const int64_t n = div_kb.divmod(c, &kb);
    const int64_t k0 = kb * kBiasGradRows;
    const int64_t rows = K - k0 < kBiasGradRows ? K - k0 : kBiasGradRows;
    const g_t* g = grad + n * sn + k0 * sk + d * sd;
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.0f;
#pragma unroll 8  // 8 rows of loads in flight (unroll 4 made ptxas keep a pointer on the stack for bf16)
    for (int64_t r = 0; r < rows; ++r) {
      const BiasGradPack<g_t, V> p = *reinterpret_cast<const BiasGradPack<g_t, V>*>(g + r * sk);
      BiasGradPack<out_t, V> o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float x = static_cast<float>(p.v[j]);
        acc[j] += x;
        o.v[j] = static_cast<out_t>(x);
      }
      if (out != nullptr) *reinterpret_cast<BiasGradPack<out_t, V>*>(out + (n * K + k0 + r) * D + d) = o;
    }
    BiasGradPack<float, V> s;
#pragma unroll
    for (int j = 0; j < V; ++j) s.v[j] = acc[j];
    *reinterpret_cast<BiasGradPack<float, V>*>(partial + c * D + d) = s;
  }
}

// grad_bias[d] = the groups of kBiasGradGroup chunk sums added in order. Block (kBiasFinishCols,
// kBiasFinishLanes): threadIdx.x a column, threadIdx.y one of the groups summed at once (each lane's loads
// independent: many in flight); lane 0 adds the group sums in group order.
template <typename b_t>
__global__ void __launch_bounds__(kBiasGradThreads)
    bias_grad_finish_kernel(const float* __restrict__ partial, int64_t chunks, int64_t D,
                            b_t* __restrict__ grad_bias) {
  __shared__ float group_sums[kBiasGradThreads];
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kBiasFinishCols + x;
  const int64_t groups = (chunks + kBiasGradGroup - 1) / kBiasGradGroup;
  float total = 0.0f;
  for (int64_t g0 = 0; g0 < groups; g0 += kBiasFinishLanes) {  // the same trip count in every thread (barriers)
    const int64_t g = g0 + y;
    float s = 0.0f;
    if (d < D && g < groups) {
      const int64_t c0 = g * kBiasGradGroup;
      const int64_t c1 = chunks - c0 < kBiasGradGroup ? chunks : c0 + kBiasGradGroup;
#pragma unroll 8
      for (int64_t c = c0; c < c1; ++c) s += partial[c * D + d];
    }
    group_sums[y * kBiasFinishCols + x] = s;
    __syncthreads();
    if (y == 0) {
      for (int j = 0; j < kBiasFinishLanes && g0 + j < groups; ++j) total += group_sums[j * kBiasFinishCols + x];
    }
    __syncthreads();
  }
  if (y == 0 && d < D) grad_bias[d] = static_cast<b_t>(total);
}

}  // namespace cuda
}  // namespace mae_kernels
