// CUDA tube masking: checks, device guard, current stream, one launch (one block per sample).
// The kernel (csrc/cuda/kernels/tube_mask_indices.cuh) knows nothing of torch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/tube_mask_indices.cuh"

namespace mae_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tube_mask_indices_cuda(
    const at::Tensor& like, const std::optional<at::Tensor>& noise_in, int64_t t, int64_t num_masked, int64_t seed,
    int64_t offset) {
  TORCH_CHECK(like.is_cuda() && like.dim() == 3, "tube_mask_indices: like must be a CUDA tensor [N, hw, 0]");
  const int64_t N = like.size(0), hw = like.size(1);
  TORCH_CHECK(hw <= cuda::kTubeMaxHW, "tube_mask_indices (cuda): hw must be at most ", cuda::kTubeMaxHW, ", got ",
              hw);
  TORCH_CHECK(t >= 0 && num_masked >= 0 && num_masked <= hw, "tube_mask_indices: need t >= 0, 0 <= num_masked <= hw");
  c10::cuda::CUDAGuard guard(like.device());
  at::Tensor noise;
  if (noise_in.has_value()) {
    TORCH_CHECK(noise_in->scalar_type() == at::kFloat && noise_in->device() == like.device() &&
                    noise_in->dim() == 2 && noise_in->size(0) == N && noise_in->size(1) == hw,
                "tube_mask_indices: noise must be float32 [N, hw] on the device");
    noise = *noise_in;
  }
  const int64_t L = t * hw, K = t * (hw - num_masked);
  const auto opts = like.options();
  auto ids_keep = at::empty({N, K}, opts.dtype(at::kLong));
  auto ids_restore = at::empty({N, L}, opts.dtype(at::kLong));
  auto mask = at::empty({N, L}, opts.dtype(at::kFloat));
  if (N == 0 || L == 0) return {ids_keep, ids_restore, mask};
  int64_t P = 1;
  while (P < hw) P <<= 1;
  constexpr int kThreads = cuda::kTubeThreads;
  const size_t smem = static_cast<size_t>(P + hw + kThreads) * sizeof(int64_t);
  const int64_t seg = (hw + kThreads - 1) / kThreads;
  auto kernel = cuda::tube_mask_indices_kernel<kThreads>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<static_cast<unsigned>(N), kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(
      noise.defined() ? noise.const_data_ptr<float>() : nullptr, noise.defined() ? noise.stride(0) : 0,
      noise.defined() ? noise.stride(1) : 0, ids_keep.data_ptr<int64_t>(), ids_restore.data_ptr<int64_t>(),
      mask.data_ptr<float>(), hw, t, num_masked, P, seg, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ids_keep, ids_restore, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("tube_mask_indices", &tube_mask_indices_cuda);
}

}  // namespace mae_kernels
