// CPU masked patch embedding: compiled gather + at::addmm (see masked_patch_embed_gemm.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "masked_patch_embed_gemm.h"

namespace mae_kernels {

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("masked_patch_embed", &masked_patch_embed_gemm);
}

}  // namespace mae_kernels
