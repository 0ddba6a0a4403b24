// Torch-free CUDA kernel of masked_patch_embed's positional epilogue: the GEMM output rows plus the positional rows
// of their kept tokens, read straight from the table (the gathered rows are never materialised), written once in
// the output dtype (in place over the GEMM output when the dtypes agree). All index arithmetic in int64.
#pragma once
#include <cstdint>

#include "fast_divmod.h"

namespace mae_kernels {
namespace cuda {

constexpr int kPosEpilogueThreads = 256;

// promote(g, p) among fp32 / fp16 / bf16: the type itself when both agree, else fp32 (fp16 with bf16 included).
template <typename g_t, typename p_t>
struct PosEpilogueOut {
  using type = float;
};
template <typename t>
struct PosEpilogueOut<t, t> {
  using type = t;
};

// Elements per thread and item: 16 bytes of the narrowest of the three types (fp32 only: 4; else 8, the fp32
// operands then moving as two 16-byte accesses), or 1 (the scalar fallback for unaligned rows).
template <bool kVector, typename g_t, typename p_t, typename out_t>
constexpr int pos_epilogue_width() {
  constexpr int narrow = sizeof(g_t) < sizeof(p_t) ? (sizeof(g_t) < sizeof(out_t) ? sizeof(g_t) : sizeof(out_t))
                                                   : (sizeof(p_t) < sizeof(out_t) ? sizeof(p_t) : sizeof(out_t));
  return kVector ? 16 / narrow : 1;
}

template <typename t, int V>
struct alignas(sizeof(t) * V) PosPack {
  t v[V];
};

// gemm: [rows, D] in the GEMM's dtype; ids: [rows] int64 (kept token l of each row); table: [R, D] (row first + l),
// or with temporal != nullptr the separable pair's spatial [hw, D] (row l % hw) and temporal [t, D] (row l / hw),
// both in p_t (their promoted dtype); out: [rows, D], may be gemm itself (no __restrict__ on the two). Item i of
// the rows * D / V items is row i / (D / V) (div_vecs), columns (i % (D / V)) * V + [0, V).
// Same arithmetic as ATen's eager `gemm + (spatial + temporal)`: each add in fp32, the pair's sum rounded to p_t,
// the result rounded once to out_t. SASS (nvcc 13.0, sm_90): the vector variants move every operand in 16-byte
// accesses, except the stores of the loop version nvcc makes for D == V (one pack per row: div_vecs the identity).
template <bool kVector, typename g_t, typename p_t>
__global__ void __launch_bounds__(kPosEpilogueThreads)
    pos_embed_epilogue_kernel(const g_t* gemm, const int64_t* __restrict__ ids, const p_t* __restrict__ table,
                              const p_t* __restrict__ temporal, int64_t first, FastDivmod div_hw,
                              FastDivmod div_vecs, int64_t items, int64_t D,
                              typename PosEpilogueOut<g_t, p_t>::type* out) {
  using out_t = typename PosEpilogueOut<g_t, p_t>::type;
  constexpr int V = pos_epilogue_width<kVector, g_t, p_t, out_t>();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items; i += stride) {
    int64_t c;
    const int64_t r = div_vecs.divmod(i, &c);
    const int64_t l = ids[r], d = c * V;
    const PosPack<g_t, V> g = *reinterpret_cast<const PosPack<g_t, V>*>(gemm + r * D + d);
    float pos[V];
    if (temporal != nullptr) {
      int64_t hi;
      const int64_t ti = div_hw.divmod(l, &hi);
      const PosPack<p_t, V> s = *reinterpret_cast<const PosPack<p_t, V>*>(table + hi * D + d);
      const PosPack<p_t, V> t = *reinterpret_cast<const PosPack<p_t, V>*>(temporal + ti * D + d);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        pos[j] = static_cast<float>(static_cast<p_t>(static_cast<float>(s.v[j]) + static_cast<float>(t.v[j])));
      }
    } else {
      const PosPack<p_t, V> p = *reinterpret_cast<const PosPack<p_t, V>*>(table + (first + l) * D + d);
#pragma unroll
      for (int j = 0; j < V; ++j) pos[j] = static_cast<float>(p.v[j]);
    }
    PosPack<out_t, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = static_cast<out_t>(static_cast<float>(g.v[j]) + pos[j]);
    *reinterpret_cast<PosPack<out_t, V>*>(out + r * D + d) = o;
  }
}

}  // namespace cuda
}  // namespace mae_kernels
