// CUDA decoder input with dual masking (VideoMAE v2): checks, device guard, current stream, dtype dispatch,
// launch. Kernel: kernels/append_mask_tokens.cuh. Backward: unshuffle_with_mask_tokens_backward (Python side).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "append_mask_tokens_host.h"
#include "cuda/kernels/append_mask_tokens.cuh"

namespace mae_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 16;  // grid-stride beyond this

at::Tensor append_mask_tokens_cuda(const at::Tensor& x, const at::Tensor& mask_token, const at::Tensor& ids_keep,
                                   const at::Tensor& ids_dec, const std::optional<at::Tensor>& pos_embed,
                                   bool has_cls, at::ScalarType out_dtype) {
  TORCH_CHECK(x.is_cuda() && mask_token.is_cuda() && ids_keep.is_cuda() && ids_dec.is_cuda(),
              "append_mask_tokens (cuda): every tensor must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  const AppendMaskTokens f = append_mask_tokens_setup(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls,
                                                      out_dtype);
  if (f.out.numel() == 0) return f.out;
  const int64_t R = f.c + f.K + f.M, rows = f.N * R;
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (f.D + 31) / 32 * 32)));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "append_mask_tokens_x", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "append_mask_tokens_out", [&] {
      cuda::append_mask_tokens_kernel<x_t, scalar_t><<<std::min(rows, kMaxBlocks), threads, 0, stream>>>(
          x.const_data_ptr<x_t>(), x.stride(0), x.stride(1), x.stride(2), f.mask_token.const_data_ptr<float>(),
          f.ids_keep.const_data_ptr<int64_t>(), f.ids_dec.const_data_ptr<int64_t>(),
          f.pos.defined() ? f.pos.const_data_ptr<float>() : nullptr, f.N, f.K, f.M, f.D, f.c, FastDivmod(R), rows,
          f.out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return f.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) { m.impl("append_mask_tokens", &append_mask_tokens_cuda); }

}  // namespace mae_kernels
