// Column sums in a fixed order, shared by the CPU backward kernels that finish a reduction from per-row partials.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace mae_kernels {

// rows: [R, D] f32 contiguous -> out[d] = the sum over r of rows[r, d], taken in groups of `group` consecutive rows
// (fp32) and then the group sums in order: the rounding error grows with group + R / group instead of R, and the
// bits depend on neither the thread count nor the backend (the CUDA and Triton kernels add in the same order).
template <typename out_t>
void grouped_column_sums(const float* rows, int64_t R, int64_t D, int64_t group, out_t* out) {
  at::parallel_for(0, D, 256, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      float total = 0.0f;
      for (int64_t r0 = 0; r0 < R; r0 += group) {
        float partial = 0.0f;
        for (int64_t r = r0; r < std::min(R, r0 + group); ++r) partial += rows[r * D + d];
        total += partial;
      }
      out[d] = static_cast<out_t>(total);
    }
  });
}

}  // namespace mae_kernels
