// CUDA decoder input (mask-token scatter / unshuffle) and its fused backward: checks, device guard,
// current stream, dtype dispatch, launch. Kernels: kernels/unshuffle_with_mask_tokens.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/kernels/unshuffle_with_mask_tokens.cuh"

namespace mae_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 16;  // grid-stride beyond this

int threads_for(int64_t D) {  // a warp multiple covering D, at most kThreads
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (D + 31) / 32 * 32)));
}

at::Tensor unshuffle_with_mask_tokens_cuda(const at::Tensor& x, const at::Tensor& mask_token,
                                           const at::Tensor& ids_restore_in,
                                           const std::optional<at::Tensor>& pos_embed, bool has_cls,
                                           at::ScalarType out_dtype) {
  TORCH_CHECK(x.is_cuda() && mask_token.is_cuda() && ids_restore_in.is_cuda(),
              "unshuffle_with_mask_tokens (cuda): every tensor must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), D = x.size(2), L = ids_restore_in.size(1);
  const int64_t c = has_cls ? 1 : 0, K = x.size(1) - c;
  TORCH_CHECK(K >= 0 && K <= L, "unshuffle_with_mask_tokens: kept count must be in [0, L]");
  const at::Tensor ids = ids_restore_in.contiguous();
  const at::Tensor mt = mask_token.to(at::kFloat).contiguous();
  at::Tensor pos;
  if (pos_embed.has_value()) pos = pos_embed->to(at::kFloat).contiguous();
  auto out = at::empty({N, c + L, D}, x.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const int64_t blocks = std::min<int64_t>(N * (c + L), kMaxBlocks);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "unshuffle_fwd_x", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "unshuffle_fwd_out", [&] {
      cuda::unshuffle_forward_kernel<x_t, scalar_t><<<blocks, threads_for(D), 0, stream>>>(
          x.const_data_ptr<x_t>(), x.stride(0), x.stride(1), x.stride(2), mt.const_data_ptr<float>(),
          ids.const_data_ptr<int64_t>(), pos.defined() ? pos.const_data_ptr<float>() : nullptr, N, L, K, D, c,
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unshuffle_with_mask_tokens_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& ids_restore_in, int64_t K, bool has_cls,
    at::ScalarType x_dtype, bool pos_grad) {
  TORCH_CHECK(grad_in.is_cuda() && ids_restore_in.is_cuda(),
              "unshuffle_with_mask_tokens_backward (cuda): every tensor must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids = ids_restore_in.contiguous();
  const int64_t N = grad.size(0), R = grad.size(1), D = grad.size(2), c = has_cls ? 1 : 0;
  auto f32 = grad.options().dtype(at::kFloat);
  auto grad_x = at::empty({N, c + K, D}, grad.options().dtype(x_dtype));
  auto grad_mask = at::empty({1, 1, D}, f32);
  auto grad_pos = pos_grad ? at::empty({1, R, D}, f32) : at::empty({0}, f32);
  if (D == 0) return {grad_x, grad_mask, grad_pos};
  if (R == 0) {
    grad_mask.zero_();
    return {grad_x, grad_mask, grad_pos};
  }
  auto partial = at::empty({R, D}, f32);
  const int threads = threads_for(D);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(R, 65535 * 16)),
                  static_cast<unsigned>((D + threads - 1) / threads));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "unshuffle_bwd_g", [&] {
    using g_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_dtype, "unshuffle_bwd_x", [&] {
      cuda::unshuffle_backward_rows_kernel<g_t, scalar_t><<<grid, threads, 0, stream>>>(
          grad.const_data_ptr<g_t>(), ids.const_data_ptr<int64_t>(), N, R - c, K, D, c,
          grad_x.data_ptr<scalar_t>(), pos_grad ? grad_pos.data_ptr<float>() : nullptr,
          partial.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  cuda::unshuffle_backward_mask_sum_kernel<<<static_cast<unsigned>((D + kThreads - 1) / kThreads), kThreads, 0,
                                             stream>>>(partial.const_data_ptr<float>(), R, D,
                                                       grad_mask.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, grad_mask, grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("unshuffle_with_mask_tokens", &unshuffle_with_mask_tokens_cuda);
  m.impl("unshuffle_with_mask_tokens_backward", &unshuffle_with_mask_tokens_backward_cuda);
}

}  // namespace mae_kernels
