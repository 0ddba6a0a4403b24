// CPU tube masking: per sample a stable argsort of the spatial noise [hw] (NaN last, ties by lower index,
// exactly torch.argsort(noise, dim=1, stable=True)) picks the hw - m kept positions (smallest noise); every frame
// repeats them, and one pass over the t*hw tokens gives each its rank in ids_shuffle (kept ascending, then
// masked ascending). Samples run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace mae_kernels {
namespace {

// noise: [N, hw] float32, strides (snn, snh); outputs contiguous, L = t*hw, K = t*(hw - m).
void tube_rows(const float* noise, int64_t snn, int64_t snh, int64_t N, int64_t t, int64_t hw, int64_t m,
               int64_t* ids_keep, int64_t* ids_restore, float* mask) {
  const int64_t kh = hw - m, L = t * hw, K = t * kh;
  // Samples of ~64K tokens per task at least (see mask_to_indices.cpp): small batches run on the calling thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(L, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(hw);
    std::vector<int64_t> rank(hw);  // rank among the kept positions (>= 0), or -1 - rank among the masked ones
    for (int64_t n = begin; n < end; ++n) {
      const float* v = noise + n * snn;
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(), [v, snh](int64_t a, int64_t b) {
        const float x = v[a * snh], y = v[b * snh];
        return !std::isnan(x) && (std::isnan(y) || x < y);
      });
      for (int64_t r = 0; r < hw; ++r) rank[order[r]] = r < kh ? 0 : -1;  // flags first
      int64_t kept = 0, masked = 0;
      for (int64_t s = 0; s < hw; ++s) rank[s] = rank[s] == 0 ? kept++ : -1 - masked++;
      for (int64_t ti = 0; ti < t; ++ti) {
        for (int64_t s = 0; s < hw; ++s) {
          const int64_t l = ti * hw + s;
          const bool is_masked = rank[s] < 0;
          const int64_t r = is_masked ? K + ti * m + (-1 - rank[s]) : ti * kh + rank[s];
          if (!is_masked) ids_keep[n * K + r] = l;
          ids_restore[n * L + l] = r;
          mask[n * L + l] = is_masked ? 1.0f : 0.0f;
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tube_mask_indices_cpu(
    const at::Tensor& like, const std::optional<at::Tensor>& noise, int64_t t, int64_t num_masked,
    int64_t /*seed*/, int64_t /*offset*/) {
  TORCH_CHECK(noise.has_value(), "mae_kernels::tube_mask_indices on CPU needs noise (drawn by the caller)");
  TORCH_CHECK(like.dim() == 3, "tube_mask_indices: like must be [N, hw, 0]");
  const int64_t N = like.size(0), hw = like.size(1);
  TORCH_CHECK(noise->dim() == 2 && noise->size(0) == N && noise->size(1) == hw &&
                  noise->scalar_type() == at::kFloat,
              "tube_mask_indices: noise must be float32 [N, hw]");
  TORCH_CHECK(t >= 0 && num_masked >= 0 && num_masked <= hw, "tube_mask_indices: need t >= 0, 0 <= num_masked <= hw");
  const int64_t L = t * hw, K = t * (hw - num_masked);
  const auto opts = like.options();
  auto ids_keep = at::empty({N, K}, opts.dtype(at::kLong));
  auto ids_restore = at::empty({N, L}, opts.dtype(at::kLong));
  auto mask = at::empty({N, L}, opts.dtype(at::kFloat));
  if (N == 0 || L == 0) return {ids_keep, ids_restore, mask};
  tube_rows(noise->const_data_ptr<float>(), noise->stride(0), noise->stride(1), N, t, hw, num_masked,
            ids_keep.data_ptr<int64_t>(), ids_restore.data_ptr<int64_t>(), mask.data_ptr<float>());
  return {ids_keep, ids_restore, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("tube_mask_indices", &tube_mask_indices_cpu);
}

}  // namespace mae_kernels
