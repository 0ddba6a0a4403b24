// CUDA decoder input (mask-token scatter / unshuffle) and its fused backward: checks, device guard,
// current stream, dtype dispatch, launch. Kernels: kernels/unshuffle_with_mask_tokens.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/kernels/unshuffle_with_mask_tokens.cuh"
#include "unshuffle_with_mask_tokens_host.h"

namespace mae_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 16;  // grid-stride beyond this

int threads_for(int64_t D) {  // a warp multiple covering D, at most kThreads
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (D + 31) / 32 * 32)));
}

at::Tensor unshuffle_with_mask_tokens_cuda(const at::Tensor& x, const at::Tensor& mask_token,
                                           const at::Tensor& ids_restore,
                                           const std::optional<at::Tensor>& pos_embed, bool has_cls,
                                           at::ScalarType out_dtype) {
  TORCH_CHECK(x.is_cuda() && mask_token.is_cuda() && ids_restore.is_cuda(),
              "unshuffle_with_mask_tokens (cuda): every tensor must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  const UnshuffleForward f = unshuffle_forward_setup(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype);
  if (f.out.numel() == 0) return f.out;
  const int64_t blocks = std::min<int64_t>(f.N * (f.c + f.L), kMaxBlocks);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "unshuffle_fwd_x", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "unshuffle_fwd_out", [&] {
      cuda::unshuffle_forward_kernel<x_t, scalar_t><<<blocks, threads_for(f.D), 0, stream>>>(
          x.const_data_ptr<x_t>(), x.stride(0), x.stride(1), x.stride(2), f.mask_token.const_data_ptr<float>(),
          f.ids.const_data_ptr<int64_t>(), f.pos.defined() ? f.pos.const_data_ptr<float>() : nullptr, f.N, f.L,
          f.K, f.D, f.c, FastDivmod(f.c + f.L), f.out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return f.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unshuffle_with_mask_tokens_backward_cuda(
    const at::Tensor& grad, const at::Tensor& ids_restore, int64_t K, bool has_cls, at::ScalarType x_dtype,
    bool pos_grad) {
  TORCH_CHECK(grad.is_cuda() && ids_restore.is_cuda(),
              "unshuffle_with_mask_tokens_backward (cuda): every tensor must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(grad.device());
  const UnshuffleBackward b = unshuffle_backward_setup(grad, ids_restore, K, has_cls, x_dtype, pos_grad);
  const int64_t R = b.R, D = b.D;
  if (D == 0) return {b.grad_x, b.grad_mask, b.grad_pos};
  if (R == 0) {
    b.grad_mask.zero_();
    return {b.grad_x, b.grad_mask, b.grad_pos};
  }
  // Stage 1 in chunks of the batch (about 8x more blocks than rows x columns at N = 256), then the chunk sums
  // in a fixed order (stage 2), then the sum over rows (stage 3): deterministic, no atomics.
  const int64_t chunks = std::max<int64_t>(1, (b.N + cuda::kSumChunk - 1) / cuda::kSumChunk);  // N may be 0
  const auto f32 = b.grad_mask.options();
  auto chunk_pos = at::empty({chunks, R, D}, f32), chunk_mask = at::empty({chunks, R, D}, f32);
  auto partial = at::empty({R, D}, f32);
  const int threads = threads_for(D);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(R, 65535 * 16)),
                  static_cast<unsigned>((D + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(chunks, 65535)));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.grad.scalar_type(), "unshuffle_bwd_g", [&] {
    using g_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_dtype, "unshuffle_bwd_x", [&] {
      cuda::unshuffle_backward_rows_kernel<g_t, scalar_t><<<grid, threads, 0, stream>>>(
          b.grad.const_data_ptr<g_t>(), b.ids.const_data_ptr<int64_t>(), b.N, R - b.c, K, D, b.c, chunks,
          b.grad_x.data_ptr<scalar_t>(), chunk_pos.data_ptr<float>(), chunk_mask.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const int64_t RD = R * D;
  cuda::unshuffle_backward_chunks_kernel<<<static_cast<unsigned>(std::min<int64_t>((RD + kThreads - 1) / kThreads,
                                                                                   kMaxBlocks)),
                                           kThreads, 0, stream>>>(
      chunk_pos.const_data_ptr<float>(), chunk_mask.const_data_ptr<float>(), chunks, R, D,
      pos_grad ? b.grad_pos.data_ptr<float>() : nullptr, partial.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  constexpr int kSumThreads = cuda::kMaskSumThreads;
  cuda::unshuffle_backward_mask_sum_kernel<<<static_cast<unsigned>((D + kSumThreads - 1) / kSumThreads), kSumThreads,
                                             0, stream>>>(partial.const_data_ptr<float>(), R, D,
                                                          b.grad_mask.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {b.grad_x, b.grad_mask, b.grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("unshuffle_with_mask_tokens", &unshuffle_with_mask_tokens_cuda);
  m.impl("unshuffle_with_mask_tokens_backward", &unshuffle_with_mask_tokens_backward_cuda);
}

}  // namespace mae_kernels
