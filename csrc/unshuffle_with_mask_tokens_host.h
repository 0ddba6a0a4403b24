// Host side of unshuffle_with_mask_tokens shared by the CPU and CUDA backends: the shapes, the contiguous / fp32
// inputs the kernels read and the outputs they write, so that each backend only dispatches and launches.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace mae_kernels {

// Forward: x [N, c + K, D] (any strides), ids_restore [N, L] -> out [N, c + L, D] in out_dtype; c = has_cls.
struct UnshuffleForward {
  int64_t N, L, K, D, c;
  at::Tensor ids;         // [N, L] int64 contiguous
  at::Tensor mask_token;  // [D] float32 contiguous
  at::Tensor pos;         // [c + L, D] float32 contiguous, or undefined
  at::Tensor out;         // [N, c + L, D] contiguous, not initialised
};

inline UnshuffleForward unshuffle_forward_setup(const at::Tensor& x, const at::Tensor& mask_token,
                                                const at::Tensor& ids_restore,
                                                const std::optional<at::Tensor>& pos_embed, bool has_cls,
                                                at::ScalarType out_dtype) {
  UnshuffleForward f;
  f.N = x.size(0);
  f.D = x.size(2);
  f.L = ids_restore.size(1);
  f.c = has_cls ? 1 : 0;
  f.K = x.size(1) - f.c;
  TORCH_CHECK(f.K >= 0 && f.K <= f.L, "unshuffle_with_mask_tokens: kept count must be in [0, L]");
  f.ids = ids_restore.contiguous();
  f.mask_token = mask_token.to(at::kFloat).contiguous();
  if (pos_embed.has_value()) f.pos = pos_embed->to(at::kFloat).contiguous();
  f.out = at::empty({f.N, f.c + f.L, f.D}, x.options().dtype(out_dtype));
  return f;
}

// Backward: grad [N, R = c + L, D] -> grad_x [N, c + K, D] in x_dtype, grad_mask, grad_pos (when pos_grad).
struct UnshuffleBackward {
  int64_t N, R, D, c;
  at::Tensor grad, ids;  // [N, R, D] and [N, L] contiguous
  at::Tensor grad_x;     // [N, c + K, D], not initialised
  at::Tensor grad_mask;  // [1, 1, D] float32, not initialised
  at::Tensor grad_pos;   // [1, R, D] float32 (not initialised), or [0] without pos_grad
};

inline UnshuffleBackward unshuffle_backward_setup(const at::Tensor& grad, const at::Tensor& ids_restore, int64_t K,
                                                  bool has_cls, at::ScalarType x_dtype, bool pos_grad) {
  UnshuffleBackward b;
  b.grad = grad.contiguous();
  b.ids = ids_restore.contiguous();
  b.N = b.grad.size(0);
  b.R = b.grad.size(1);
  b.D = b.grad.size(2);
  b.c = has_cls ? 1 : 0;
  const auto f32 = b.grad.options().dtype(at::kFloat);
  b.grad_x = at::empty({b.N, b.c + K, b.D}, b.grad.options().dtype(x_dtype));
  b.grad_mask = at::empty({1, 1, b.D}, f32);
  b.grad_pos = pos_grad ? at::empty({1, b.R, b.D}, f32) : at::empty({0}, f32);
  return b;
}

}  // namespace mae_kernels
