// CUDA masked patch embedding: the fused gather kernel (masked_patchify) feeding cuBLAS through at::addmm,
// then the positional embedding rows (see masked_patch_embed_gemm.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "masked_patch_embed_gemm.h"

namespace mae_kernels {
namespace {

at::Tensor masked_patch_embed_cuda(const at::Tensor& imgs, const at::Tensor& ids_keep, const at::Tensor& weight,
                                   const at::Tensor& bias, const std::optional<at::Tensor>& pos_embed,
                                   const std::optional<at::Tensor>& pos_temporal) {
  TORCH_CHECK(imgs.is_cuda(), "mae_kernels: imgs must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(imgs.device());
  return masked_patch_embed_gemm(imgs, ids_keep, weight, bias, pos_embed, pos_temporal);
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("masked_patch_embed", &masked_patch_embed_cuda);
}

}  // namespace mae_kernels
