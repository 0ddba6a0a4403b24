// masked_patch_embed on CPU and CUDA: the kept patches gathered by mae_kernels::masked_patchify (only their
// pixels are read), one GEMM with the bias (at::addmm: multi-threaded on CPU, cuBLAS on CUDA), then the
// positional embedding rows 1 + ids_keep added. The Conv2d weight [D, C, p, p] is permuted to MAE's
// (p_row, p_col, c) patch order. Output dtype: imgs' dtype promoted with pos_embed's (as the reference's add).
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace mae_kernels {

inline at::Tensor masked_patch_embed_gemm(const at::Tensor& imgs, const at::Tensor& ids_keep, const at::Tensor& weight,
                                          const at::Tensor& bias, const std::optional<at::Tensor>& pos_embed) {
  static auto masked_patchify = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("mae_kernels::masked_patchify", "")
                                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  TORCH_CHECK(imgs.dim() == 4 && ids_keep.dim() == 2 && weight.dim() == 4 && weight.size(0) > 0 &&
                  weight.size(2) == weight.size(3) && weight.size(3) > 0,
              "mae_kernels::masked_patch_embed: expected imgs [N, C, H, W], ids_keep [N, K] and a non-empty Conv2d "
              "weight [D, C, p, p], got ", imgs.sizes(), ", ", ids_keep.sizes(), ", ", weight.sizes());
  const int64_t N = ids_keep.size(0), K = ids_keep.size(1), D = weight.size(0), p = weight.size(3);
  const int64_t P = weight.numel() / D;  // D > 0 checked: an integer division by zero would kill the process
  const at::Tensor patches = masked_patchify.call(imgs, ids_keep, p).view({N * K, P});
  const at::Tensor w = weight.permute({0, 2, 3, 1}).reshape({D, P});  // (c, p_row, p_col) -> (p_row, p_col, c)
  at::Tensor out;
  if (patches.is_cpu() && at::isReducedFloatingType(patches.scalar_type())) {
    // bf16/fp16 on CPU: an fp32 GEMM rounded once (as cuBLAS accumulates). ATen's reduced-precision CPU GEMMs
    // are oneDNN's ISA-specific kernels (AVX-512 BF16/FP16) or scalar loops, whose results, non-finite ones
    // included, depend on the CPU.
    out = at::addmm(bias.to(at::kFloat), patches.to(at::kFloat), w.to(at::kFloat).t()).to(patches.scalar_type());
  } else {
    out = at::addmm(bias, patches, w.t());
  }
  out = out.view({N, K, D});
  if (pos_embed.has_value()) {
    const at::Tensor rows = ids_keep.reshape({N * K}) + 1;  // row 0 of pos_embed is the cls token's
    out = out + pos_embed->select(0, 0).index_select(0, rows).view({N, K, D});
  }
  return out;
}

}  // namespace mae_kernels
