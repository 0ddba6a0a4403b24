// CPU decoder input with dual masking (VideoMAE v2): kept rows copied, mask-token rows appended, each + the
// pos_embed row of its position. Output rows run in parallel; values in fp32, rounded once to the output dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "append_mask_tokens_host.h"

namespace mae_kernels {
namespace {

// x: [N, c + K, D] strides (sxn, sxr, sxd); mask_token: [D] f32; ids_keep [N, K], ids_dec [N, M] contiguous;
// pos: [c + L, D] f32 or nullptr (ids validated in [0, L) by the caller); out: [N, c + K + M, D] contiguous.
template <typename x_t, typename out_t>
void append_rows(const x_t* x, int64_t sxn, int64_t sxr, int64_t sxd, const float* mask_token,
                 const int64_t* ids_keep, const int64_t* ids_dec, const float* pos, int64_t N, int64_t K,
                 int64_t M, int64_t D, int64_t c, out_t* out) {
  const int64_t R = c + K + M;
  at::parallel_for(0, N * R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / R, j = i % R;
      const bool from_x = j < c + K;
      const x_t* src = x + n * sxn + j * sxr;
      const float* p = nullptr;
      if (pos != nullptr) {
        const int64_t at = j < c ? 0 : c + (from_x ? ids_keep[n * K + j - c] : ids_dec[n * M + j - c - K]);
        p = pos + at * D;
      }
      out_t* dst = out + i * D;
      for (int64_t d = 0; d < D; ++d) {
        float v = from_x ? static_cast<float>(src[d * sxd]) : mask_token[d];
        if (p != nullptr) v += p[d];
        dst[d] = static_cast<out_t>(v);
      }
    }
  });
}

at::Tensor append_mask_tokens_cpu(const at::Tensor& x, const at::Tensor& mask_token, const at::Tensor& ids_keep,
                                  const at::Tensor& ids_dec, const std::optional<at::Tensor>& pos_embed,
                                  bool has_cls, at::ScalarType out_dtype) {
  const AppendMaskTokens f = append_mask_tokens_setup(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls,
                                                      out_dtype);
  if (f.out.numel() == 0) return f.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "append_mask_tokens_x", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "append_mask_tokens_out", [&] {
      append_rows<x_t, scalar_t>(x.const_data_ptr<x_t>(), x.stride(0), x.stride(1), x.stride(2),
                                 f.mask_token.const_data_ptr<float>(), f.ids_keep.const_data_ptr<int64_t>(),
                                 f.ids_dec.const_data_ptr<int64_t>(),
                                 f.pos.defined() ? f.pos.const_data_ptr<float>() : nullptr, f.N, f.K, f.M, f.D,
                                 f.c, f.out.data_ptr<scalar_t>());
    });
  });
  return f.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) { m.impl("append_mask_tokens", &append_mask_tokens_cpu); }

}  // namespace mae_kernels
