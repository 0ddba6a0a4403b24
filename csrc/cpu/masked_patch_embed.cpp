// CPU masked patch embedding: compiled gather + at::addmm, then the positional epilogue below (see
// masked_patch_embed_gemm.h). Rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "masked_patch_embed_gemm.h"

namespace mae_kernels {
namespace {

// gemm, out: [rows, D] contiguous (out may be gemm); ids: [rows]; table: [R, D] (row first + l), or with
// temporal != nullptr spatial [hw, D] (row l % hw) and temporal [t, D] (row l / hw). Eager's arithmetic: each add
// in fp32, the pair's sum rounded to p_t, the result once to out_t.
template <typename g_t, typename p_t, typename out_t>
void add_positions_rows(const g_t* gemm, const int64_t* ids, const p_t* table, const p_t* temporal, int64_t first,
                        int64_t hw, int64_t rows, int64_t D, out_t* out) {
  at::parallel_for(0, rows, 1 + 4096 / D, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t l = ids[r];
      const g_t* g = gemm + r * D;
      out_t* o = out + r * D;
      if (temporal != nullptr) {
        const p_t* s = table + (l % hw) * D;
        const p_t* t = temporal + (l / hw) * D;
        for (int64_t d = 0; d < D; ++d) {
          const float pos = static_cast<float>(static_cast<p_t>(static_cast<float>(s[d]) + static_cast<float>(t[d])));
          o[d] = static_cast<out_t>(static_cast<float>(g[d]) + pos);
        }
      } else {
        const p_t* p = table + (first + l) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<out_t>(static_cast<float>(g[d]) + static_cast<float>(p[d]));
      }
    }
  });
}

void add_positions_cpu(const PosEpilogue& e) {
  dispatch_pos_epilogue(e, [&](auto g, auto p) {
    using g_t = decltype(g);
    using p_t = decltype(p);
    using out_t = std::conditional_t<std::is_same_v<g_t, p_t>, g_t, float>;  // promote(g, p)
    add_positions_rows<g_t, p_t, out_t>(e.gemm.const_data_ptr<g_t>(), e.ids.const_data_ptr<int64_t>(),
                                        e.table.const_data_ptr<p_t>(),
                                        e.temporal.defined() ? e.temporal.const_data_ptr<p_t>() : nullptr, e.first,
                                        e.hw, e.gemm.size(0), e.D, e.out.data_ptr<out_t>());
  });
}

at::Tensor masked_patch_embed_cpu(const at::Tensor& imgs, const at::Tensor& ids_keep, const at::Tensor& weight,
                                  const at::Tensor& bias, const std::optional<at::Tensor>& pos_embed,
                                  const std::optional<at::Tensor>& pos_temporal) {
  return masked_patch_embed_gemm(imgs, ids_keep, weight, bias, pos_embed, pos_temporal, add_positions_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("masked_patch_embed", &masked_patch_embed_cpu);
}

}  // namespace mae_kernels
