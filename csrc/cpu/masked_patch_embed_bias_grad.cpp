// CPU masked_patch_embed_bias_grad: one pass over grad [N, K, D] that writes the GEMM-dtype copy (when asked) and
// the per-chunk column sums, then the fixed-order sum of the chunks (masked_patch_embed_bias_grad.h): the same
// fp32 additions in the same order as the CUDA and Triton kernels, for any thread count. Chunks run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "column_sums.h"
#include "masked_patch_embed_bias_grad_host.h"

namespace mae_kernels {
namespace {

// grad: [N, K, D] strides (sn, sk, sd); out: [N * K, D] contiguous or nullptr; partial: [N * KB, D] f32.
template <typename g_t, typename out_t>
void bias_grad_rows(const g_t* grad, int64_t sn, int64_t sk, int64_t sd, int64_t K, int64_t D, int64_t KB,
                    int64_t chunks, out_t* out, float* partial) {
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(D);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n = c / KB, k0 = (c % KB) * kBiasGradRows, k1 = std::min(K, k0 + kBiasGradRows);
      float* acc = partial + c * D;
      std::fill(acc, acc + D, 0.0f);
      for (int64_t k = k0; k < k1; ++k) {
        const g_t* g = grad + n * sn + k * sk;
        if (sd == 1) {
          for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(g[d]);
        } else {
          for (int64_t d = 0; d < D; ++d) row[d] = static_cast<float>(g[d * sd]);
        }
        for (int64_t d = 0; d < D; ++d) acc[d] += row[d];
        if (out != nullptr) {
          out_t* o = out + (n * K + k) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = static_cast<out_t>(row[d]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_patch_embed_bias_grad_cpu(const at::Tensor& grad,
                                                                    at::ScalarType gemm_dtype, bool write,
                                                                    at::ScalarType bias_dtype) {
  const BiasGrad b = bias_grad_setup(grad, gemm_dtype, write, bias_dtype);
  if (b.D == 0) return {b.gemm_grad, b.grad_bias};
  dispatch_bias_grad_dtype(grad.scalar_type(), [&](auto g) {
    using g_t = decltype(g);
    // Without a copy the output type is unused: g_t keeps the instantiations down.
    dispatch_bias_grad_dtype(write ? gemm_dtype : grad.scalar_type(), [&](auto o) {
      using out_t = decltype(o);
      bias_grad_rows<g_t, out_t>(grad.const_data_ptr<g_t>(), grad.stride(0), grad.stride(1), grad.stride(2), b.K,
                                 b.D, b.KB, b.chunks, write ? b.gemm_grad.data_ptr<out_t>() : nullptr,
                                 b.partial.data_ptr<float>());
    });
  });
  dispatch_bias_grad_dtype(bias_dtype, [&](auto t) {
    using b_t = decltype(t);
    grouped_column_sums<b_t>(b.partial.const_data_ptr<float>(), b.chunks, b.D, kBiasGradGroup,
                             b.grad_bias.data_ptr<b_t>());
  });
  return {b.gemm_grad, b.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("masked_patch_embed_bias_grad", &masked_patch_embed_bias_grad_cpu);
}

}  // namespace mae_kernels
