// CPU random masking: a stable per-row argsort of the noise (NaN last, ties by lower index, exactly
// torch.argsort(noise, dim=1, stable=True)), then the kept rows of x gathered. Rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace mae_kernels {
namespace {

// noise: [N, L] float32 contiguous; x: [N, L, D] contiguous, copied as raw bytes (a gather is bit-exact
// whatever the dtype); outputs contiguous.
void random_masking_rows(const float* noise, const char* x, int64_t N, int64_t L, int64_t row_bytes,
                         int64_t len_keep, char* x_masked, float* mask, int64_t* ids_restore,
                         int64_t* ids_keep) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(L);
    for (int64_t n = begin; n < end; ++n) {
      const float* v = noise + n * L;
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(), [v](int64_t a, int64_t b) {
        return !std::isnan(v[a]) && (std::isnan(v[b]) || v[a] < v[b]);
      });
      for (int64_t i = 0; i < L; ++i) {
        const int64_t l = order[i];
        ids_restore[n * L + l] = i;
        mask[n * L + l] = i >= len_keep ? 1.0f : 0.0f;
      }
      for (int64_t k = 0; k < len_keep; ++k) {
        const int64_t l = order[k];
        ids_keep[n * len_keep + k] = l;
        if (row_bytes > 0) {
          std::memcpy(x_masked + (n * len_keep + k) * row_bytes, x + (n * L + l) * row_bytes, row_bytes);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> random_masking_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& noise_in, int64_t len_keep, int64_t /*seed*/,
    int64_t /*offset*/) {
  TORCH_CHECK(noise_in.has_value(), "mae_kernels::random_masking on CPU needs noise (drawn by the caller)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor noise = noise_in->contiguous();
  const int64_t N = x.size(0), L = x.size(1), D = x.size(2);
  TORCH_CHECK(len_keep >= 0 && len_keep <= L, "len_keep must be in [0, L]");
  auto x_masked = at::empty({N, len_keep, D}, x.options());
  auto mask = at::empty({N, L}, noise.options().dtype(at::kFloat));
  auto ids_restore = at::empty({N, L}, noise.options().dtype(at::kLong));
  auto ids_keep = at::empty({N, len_keep}, noise.options().dtype(at::kLong));
  random_masking_rows(noise.data_ptr<float>(), static_cast<const char*>(x.const_data_ptr()), N, L,
                      D * x.element_size(), len_keep, static_cast<char*>(x_masked.data_ptr()),
                      mask.data_ptr<float>(), ids_restore.data_ptr<int64_t>(), ids_keep.data_ptr<int64_t>());
  return {x_masked, mask, ids_restore, ids_keep};
}

// grad_x[n, ids_keep[n, k]] = grad_x_masked[n, k]; zero elsewhere. Each output row is written exactly once
// (copy or zero fill), half the traffic of zeros-then-scatter.
at::Tensor random_masking_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids_keep_in, int64_t L) {
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids_keep = ids_keep_in.contiguous();
  const int64_t N = grad.size(0), K = grad.size(1), D = grad.size(2);
  auto grad_x = at::empty({N, L, D}, grad.options());
  const int64_t row_bytes = D * grad.element_size();
  if (row_bytes == 0 || N == 0) return grad_x;
  const char* src = static_cast<const char*>(grad.const_data_ptr());
  char* dst = static_cast<char*>(grad_x.data_ptr());
  const int64_t* ids = ids_keep.const_data_ptr<int64_t>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> source(L);  // rank among the kept rows of output row l, or -1
    for (int64_t n = begin; n < end; ++n) {
      std::fill(source.begin(), source.end(), int64_t{-1});
      for (int64_t k = 0; k < K; ++k) source[ids[n * K + k]] = k;
      for (int64_t l = 0; l < L; ++l) {
        char* out = dst + (n * L + l) * row_bytes;
        if (source[l] >= 0) {
          std::memcpy(out, src + (n * K + source[l]) * row_bytes, row_bytes);
        } else {
          std::memset(out, 0, row_bytes);
        }
      }
    }
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("random_masking", &random_masking_cpu);
  m.impl("random_masking_backward", &random_masking_backward_cpu);
}

}  // namespace mae_kernels
