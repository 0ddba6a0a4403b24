// Host side of masked_patch_embed_bias_grad shared by the CPU and CUDA backends: the checks, the shapes and the
// outputs the kernels write, so that each backend only dispatches and launches.
#pragma once
#include <ATen/ATen.h>

#include "masked_patch_embed_bias_grad.h"

namespace mae_kernels {

// grad [N, K, D] (any strides; read in place) -> gemm_grad [N * K, D] contiguous in gemm_dtype when write (else
// [0, D]: the caller uses grad itself), grad_bias [D] in bias_dtype, and the per-chunk column sums the kernels
// fill first (masked_patch_embed_bias_grad.h).
struct BiasGrad {
  int64_t N, K, D, KB, chunks;
  at::Tensor gemm_grad;  // [N * K, D] or [0, D], not initialised
  at::Tensor grad_bias;  // [D], not initialised
  at::Tensor partial;    // [chunks, D] float32, not initialised
};

// f(value) with a value-initialised float / at::Half / at::BFloat16 of dtype t (the op's three dtypes).
template <typename F>
void dispatch_bias_grad_dtype(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "mae_kernels::masked_patch_embed_bias_grad: unsupported dtype ", t,
                         " (expected float32, float16 or bfloat16)");
  }
}

inline BiasGrad bias_grad_setup(const at::Tensor& grad, at::ScalarType gemm_dtype, bool write,
                                at::ScalarType bias_dtype) {
  TORCH_CHECK(grad.dim() == 3, "mae_kernels::masked_patch_embed_bias_grad: grad must be [N, K, D], got ",
              grad.sizes());
  BiasGrad b;
  b.N = grad.size(0);
  b.K = grad.size(1);
  b.D = grad.size(2);
  b.KB = (b.K + kBiasGradRows - 1) / kBiasGradRows;
  b.chunks = b.N * b.KB;
  b.gemm_grad = at::empty({write ? b.N * b.K : 0, b.D}, grad.options().dtype(gemm_dtype));
  b.grad_bias = at::empty({b.D}, grad.options().dtype(bias_dtype));
  b.partial = at::empty({b.chunks, b.D}, grad.options().dtype(at::kFloat));
  return b;
}

}  // namespace mae_kernels
