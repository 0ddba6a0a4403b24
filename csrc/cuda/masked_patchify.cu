// CUDA patchify / unpatchify / masked_patchify / masked_patchify_backward: checks, device guard, current
// stream, launch (allocation and dispatch on element width: csrc/masked_patchify_host.h; kernel:
// kernels/masked_patchify.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/kernels/masked_patchify.cuh"
#include "masked_patchify_host.h"

namespace mae_kernels {
namespace {

constexpr int kThreads = 256;

int64_t num_blocks(int64_t total) {
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, cap));
}

template <bool kToImage, typename word>
void launch_copy(const word* src, const int64_t* ids, PatchLayout lay, int64_t N, int64_t K, word* dst) {
  const int64_t P = lay.p * lay.p * lay.C;
  const int64_t total = N * K * P;
  const int64_t blocks = num_blocks(total), stride = blocks * kThreads;
  copy_patches_kernel<kToImage, word><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      src, ids, lay, FastDivmod(P), FastDivmod(K), total, (total + stride - 1) / stride, dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gather_cuda(const at::Tensor& imgs, const at::Tensor* ids_keep, int64_t p) {
  TORCH_CHECK(imgs.is_cuda(), "mae_kernels: imgs must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(imgs.device());
  return gather_patches(imgs, ids_keep, p, [](auto... args) { launch_copy<false>(args...); });
}

at::Tensor scatter_cuda(const at::Tensor& patches, const at::Tensor* ids_keep, int64_t p, int64_t H, int64_t W) {
  TORCH_CHECK(patches.is_cuda(), "mae_kernels: the patch vectors must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(patches.device());
  return scatter_patches(patches, ids_keep, p, H, W, [](auto... args) { launch_copy<true>(args...); });
}

using Ops = PatchifyOps<gather_cuda, scatter_cuda>;

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("patchify", &Ops::patchify);
  m.impl("unpatchify", &Ops::unpatchify);
  m.impl("masked_patchify", &Ops::masked_patchify);
  m.impl("masked_patchify_backward", &Ops::masked_patchify_backward);
}

}  // namespace mae_kernels
