// CPU mask_to_indices: one pass per row over a boolean mask (True = masked) counting kept and masked patches,
// which gives each patch its rank in ids_shuffle = argsort(mask, stable=True) (kept ascending, then masked
// ascending). Rows run in parallel; no sort.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace mae_kernels {
namespace {

// bool_mask: [N, L] bytes (nonzero = masked), strides (sn, sl) in elements; outputs contiguous. A row whose kept
// count is not K (rejected by the Python wrapper) still writes only inside the outputs.
void mask_rows(const uint8_t* bool_mask, int64_t sn, int64_t sl, int64_t N, int64_t L, int64_t K,
               int64_t* ids_keep, int64_t* ids_restore, float* mask) {
  // Rows of ~64K patches per task at least: a video batch (8 x 1568) is microseconds of work, less than waking
  // the thread pool costs on a busy machine.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(L, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = bool_mask + n * sn;
      int64_t kept = 0, masked = 0;
      for (int64_t l = 0; l < L; ++l) {
        const bool is_masked = row[l * sl] != 0;
        const int64_t r = is_masked ? K + masked++ : kept++;
        if (!is_masked && r < K) ids_keep[n * K + r] = l;
        ids_restore[n * L + l] = r;
        mask[n * L + l] = is_masked ? 1.0f : 0.0f;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_to_indices_cpu(const at::Tensor& bool_mask, int64_t num_kept) {
  TORCH_CHECK(bool_mask.dim() == 2 && bool_mask.element_size() == 1,
              "mask_to_indices: bool_mask must be a 2-D tensor of 1-byte elements (bool)");
  const int64_t N = bool_mask.size(0), L = bool_mask.size(1);
  TORCH_CHECK(num_kept >= 0 && num_kept <= L, "mask_to_indices: num_kept must be in [0, L]");
  const auto opts = bool_mask.options();
  auto ids_keep = at::empty({N, num_kept}, opts.dtype(at::kLong));
  auto ids_restore = at::empty({N, L}, opts.dtype(at::kLong));
  auto mask = at::empty({N, L}, opts.dtype(at::kFloat));
  if (N == 0 || L == 0) return {ids_keep, ids_restore, mask};
  mask_rows(static_cast<const uint8_t*>(bool_mask.const_data_ptr()), bool_mask.stride(0), bool_mask.stride(1), N,
            L, num_kept, ids_keep.data_ptr<int64_t>(), ids_restore.data_ptr<int64_t>(), mask.data_ptr<float>());
  return {ids_keep, ids_restore, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("mask_to_indices", &mask_to_indices_cpu);
}

}  // namespace mae_kernels
