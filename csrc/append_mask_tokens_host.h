// Host side of append_mask_tokens shared by the CPU and CUDA backends: shapes, the fp32 / contiguous inputs the
// kernels read and the output they write.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace mae_kernels {

// x [N, c + K, D] (any strides), ids_keep [N, K], ids_dec [N, M] -> out [N, c + K + M, D] in out_dtype.
struct AppendMaskTokens {
  int64_t N, K, M, D, c;
  at::Tensor ids_keep, ids_dec;  // int64 contiguous
  at::Tensor mask_token;         // [D] float32 contiguous
  at::Tensor pos;                // [c + L, D] float32 contiguous, or undefined
  at::Tensor out;                // [N, c + K + M, D] contiguous, not initialised
};

inline AppendMaskTokens append_mask_tokens_setup(const at::Tensor& x, const at::Tensor& mask_token,
                                                 const at::Tensor& ids_keep, const at::Tensor& ids_dec,
                                                 const std::optional<at::Tensor>& pos_embed, bool has_cls,
                                                 at::ScalarType out_dtype) {
  AppendMaskTokens f;
  f.N = x.size(0);
  f.D = x.size(2);
  f.c = has_cls ? 1 : 0;
  f.K = ids_keep.size(1);
  f.M = ids_dec.size(1);
  TORCH_CHECK(x.size(1) == f.c + f.K, "append_mask_tokens: x must have ", f.c + f.K, " rows, got ", x.size(1));
  f.ids_keep = ids_keep.contiguous();
  f.ids_dec = ids_dec.contiguous();
  f.mask_token = mask_token.to(at::kFloat).contiguous();
  if (pos_embed.has_value()) f.pos = pos_embed->to(at::kFloat).contiguous();
  f.out = at::empty({f.N, f.c + f.K + f.M, f.D}, x.options().dtype(out_dtype));
  return f;
}

}  // namespace mae_kernels
