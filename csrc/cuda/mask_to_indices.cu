// CUDA mask_to_indices: checks, device guard, current stream, one launch (one block per row).
// The kernel (csrc/cuda/kernels/mask_to_indices.cuh) knows nothing of torch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/mask_to_indices.cuh"

namespace mae_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_to_indices_cuda(const at::Tensor& bool_mask, int64_t num_kept) {
  TORCH_CHECK(bool_mask.is_cuda() && bool_mask.dim() == 2 && bool_mask.element_size() == 1,
              "mask_to_indices: bool_mask must be a 2-D CUDA tensor of 1-byte elements (bool)");
  const int64_t N = bool_mask.size(0), L = bool_mask.size(1);
  TORCH_CHECK(num_kept >= 0 && num_kept <= L, "mask_to_indices: num_kept must be in [0, L]");
  c10::cuda::CUDAGuard guard(bool_mask.device());
  const auto opts = bool_mask.options();
  auto ids_keep = at::empty({N, num_kept}, opts.dtype(at::kLong));
  auto ids_restore = at::empty({N, L}, opts.dtype(at::kLong));
  auto mask = at::empty({N, L}, opts.dtype(at::kFloat));
  if (N == 0 || L == 0) return {ids_keep, ids_restore, mask};
  constexpr int kThreads = cuda::kMaskToIndicesThreads;
  const int64_t seg = (L + kThreads - 1) / kThreads;
  cuda::mask_to_indices_kernel<kThreads>
      <<<static_cast<unsigned>(N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          static_cast<const uint8_t*>(bool_mask.const_data_ptr()), bool_mask.stride(0), bool_mask.stride(1),
          ids_keep.data_ptr<int64_t>(), ids_restore.data_ptr<int64_t>(), mask.data_ptr<float>(), L, num_kept, seg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ids_keep, ids_restore, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("mask_to_indices", &mask_to_indices_cuda);
}

}  // namespace mae_kernels
