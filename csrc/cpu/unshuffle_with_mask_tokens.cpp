// CPU decoder input (mask-token scatter / unshuffle) and its fused backward. Every output row reads its
// source through ids_restore (a pure gather: one write per output element). Output rows run in parallel.
// Values are computed in fp32 (mask_token and pos_embed arrive as fp32) and rounded once to the output dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "column_sums.h"
#include "unshuffle_with_mask_tokens_host.h"

namespace mae_kernels {
namespace {

// x: [N, c + K, D] with strides (sxn, sxr, sxd); mask_token: [D] f32; ids: [N, L] contiguous;
// pos: [c + L, D] f32 or nullptr; out: [N, c + L, D] contiguous. c = has_cls.
template <typename x_t, typename out_t>
void unshuffle_forward_rows(const x_t* x, int64_t sxn, int64_t sxr, int64_t sxd, const float* mask_token,
                            const int64_t* ids, const float* pos, int64_t N, int64_t L, int64_t K,
                            int64_t D, bool has_cls, out_t* out) {
  const int64_t c = has_cls ? 1 : 0, R = c + L;
  at::parallel_for(0, N * R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / R, j = i % R;
      int64_t src_row = 0;  // row of x, or -1 for the mask token
      if (j < c) {
        src_row = 0;
      } else {
        const int64_t r = ids[n * L + (j - c)];
        src_row = (r >= 0 && r < K) ? c + r : -1;  // out-of-range ids read the mask token, never out of bounds
      }
      const x_t* src = x + n * sxn + src_row * sxr;
      const float* p = pos != nullptr ? pos + j * D : nullptr;
      out_t* dst = out + i * D;
      for (int64_t d = 0; d < D; ++d) {
        float v = src_row >= 0 ? static_cast<float>(src[d * sxd]) : mask_token[d];
        if (p != nullptr) v += p[d];
        dst[d] = static_cast<out_t>(v);
      }
    }
  });
}

// Sums of long columns are taken in chunks of kChunk terms (fp32), then the chunk sums are added: the
// rounding error grows with kChunk + count / kChunk instead of count, at no cost in determinism.
constexpr int64_t kChunk = 32;

// grad: [N, c + L, D] contiguous; ids: [N, L]; grad_x: [N, c + K, D]; grad_pos: [c + L, D] f32 or nullptr;
// partial: [c + L, D] f32, the per-row sums of the mask-token rows (stage 1); grad_mask: [D] f32 (stage 2).
// Per-row partials make the result independent of the thread count (deterministic).
template <typename g_t, typename x_t>
void unshuffle_backward_rows(const g_t* grad, const int64_t* ids, int64_t N, int64_t L, int64_t K, int64_t D,
                             bool has_cls, x_t* grad_x, float* grad_pos, float* partial, float* grad_mask) {
  const int64_t c = has_cls ? 1 : 0, R = c + L;
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc_pos(D), acc_mask(D), chunk_pos(D), chunk_mask(D);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(acc_pos.begin(), acc_pos.end(), 0.0f);
      std::fill(acc_mask.begin(), acc_mask.end(), 0.0f);
      for (int64_t n0 = 0; n0 < N; n0 += kChunk) {
        std::fill(chunk_pos.begin(), chunk_pos.end(), 0.0f);
        std::fill(chunk_mask.begin(), chunk_mask.end(), 0.0f);
        for (int64_t n = n0; n < std::min(N, n0 + kChunk); ++n) {
          const g_t* g = grad + (n * R + j) * D;
          int64_t dst_row = 0;
          if (j >= c) {
            const int64_t r = ids[n * L + (j - c)];
            dst_row = (r >= 0 && r < K) ? c + r : -1;
          }
          if (dst_row >= 0) {
            x_t* gx = grad_x + (n * (c + K) + dst_row) * D;
            for (int64_t d = 0; d < D; ++d) gx[d] = static_cast<x_t>(static_cast<float>(g[d]));
          } else {
            for (int64_t d = 0; d < D; ++d) chunk_mask[d] += static_cast<float>(g[d]);
          }
          for (int64_t d = 0; d < D; ++d) chunk_pos[d] += static_cast<float>(g[d]);
        }
        for (int64_t d = 0; d < D; ++d) {
          acc_pos[d] += chunk_pos[d];
          acc_mask[d] += chunk_mask[d];
        }
      }
      if (grad_pos != nullptr) std::copy(acc_pos.begin(), acc_pos.end(), grad_pos + j * D);
      std::copy(acc_mask.begin(), acc_mask.end(), partial + j * D);
    }
  });
  grouped_column_sums(partial, R, D, kChunk, grad_mask);
}

at::Tensor unshuffle_with_mask_tokens_cpu(const at::Tensor& x, const at::Tensor& mask_token,
                                          const at::Tensor& ids_restore,
                                          const std::optional<at::Tensor>& pos_embed, bool has_cls,
                                          at::ScalarType out_dtype) {
  const UnshuffleForward f = unshuffle_forward_setup(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype);
  if (f.out.numel() == 0) return f.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "unshuffle_fwd_x", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "unshuffle_fwd_out", [&] {
      unshuffle_forward_rows<x_t, scalar_t>(
          x.const_data_ptr<x_t>(), x.stride(0), x.stride(1), x.stride(2), f.mask_token.const_data_ptr<float>(),
          f.ids.const_data_ptr<int64_t>(), f.pos.defined() ? f.pos.const_data_ptr<float>() : nullptr, f.N, f.L,
          f.K, f.D, has_cls, f.out.data_ptr<scalar_t>());
    });
  });
  return f.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unshuffle_with_mask_tokens_backward_cpu(
    const at::Tensor& grad, const at::Tensor& ids_restore, int64_t K, bool has_cls, at::ScalarType x_dtype,
    bool pos_grad) {
  const UnshuffleBackward b = unshuffle_backward_setup(grad, ids_restore, K, has_cls, x_dtype, pos_grad);
  auto partial = at::empty({b.R, b.D}, b.grad_mask.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.grad.scalar_type(), "unshuffle_bwd_g", [&] {
    using g_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_dtype, "unshuffle_bwd_x", [&] {
      unshuffle_backward_rows<g_t, scalar_t>(b.grad.const_data_ptr<g_t>(), b.ids.const_data_ptr<int64_t>(), b.N,
                                             b.R - b.c, K, b.D, has_cls, b.grad_x.data_ptr<scalar_t>(),
                                             pos_grad ? b.grad_pos.data_ptr<float>() : nullptr,
                                             partial.data_ptr<float>(), b.grad_mask.data_ptr<float>());
    });
  });
  return {b.grad_x, b.grad_mask, b.grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("unshuffle_with_mask_tokens", &unshuffle_with_mask_tokens_cpu);
  m.impl("unshuffle_with_mask_tokens_backward", &unshuffle_with_mask_tokens_backward_cpu);
}

}  // namespace mae_kernels
