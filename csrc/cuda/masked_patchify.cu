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

template <bool kToImage, typename word>
void launch_copy(const word* src, const int64_t* ids, PatchLayout lay, int64_t N, int64_t K, word* dst) {
  // Blocks: one per row up to 8 per SM (a full SM at kThreads = 256), each then walks rows grid-stride.
  const int64_t rows = N * K;
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(rows, cap));
  copy_patches_kernel<kToImage, word, kThreads><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      src, ids, lay, FastDivmod(K), rows, lay.P(), dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gather_cuda(const at::Tensor& imgs, const at::Tensor* ids_keep, at::IntArrayRef patch_size) {
  TORCH_CHECK(imgs.is_cuda(), "mae_kernels: imgs must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(imgs.device());
  return gather_patches(imgs, ids_keep, patch_size, [](auto... args) { launch_copy<false>(args...); });
}

at::Tensor scatter_cuda(const at::Tensor& patches, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                        at::IntArrayRef image_size) {
  TORCH_CHECK(patches.is_cuda(), "mae_kernels: the patch vectors must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(patches.device());
  return scatter_patches(patches, ids_keep, patch_size, image_size,
                         [](auto... args) { launch_copy<true>(args...); });
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
