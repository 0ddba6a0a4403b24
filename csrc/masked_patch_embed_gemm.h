// masked_patch_embed on CPU and CUDA: the kept patches (images) or tubelets (videos) gathered by
// mae_kernels::masked_patchify (only their pixels are read), one GEMM with the bias (at::addmm: multi-threaded on
// CPU, cuBLAS on CUDA), then the positional rows of the kept tokens added. The Conv2d weight [D, C, ph, pw] /
// Conv3d weight [D, C, u, ph, pw] is permuted to the patch-vector order (frame, p_row, p_col, c).
// Positional rows: pos_embed [1, R, D] alone, R = L or 1 + L (a leading cls row is skipped): row R - L + l;
// or the separable pair pos_embed = spatial [1, hw, D] and pos_temporal [1, t, D]: spatial[l % hw] +
// temporal[l / hw], gathered per kept token (the [L, D] sum is never formed).
// Output dtype: imgs' dtype promoted with the positional tables' (as the reference's add).
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace mae_kernels {

inline at::Tensor masked_patch_embed_gemm(const at::Tensor& imgs, const at::Tensor& ids_keep, const at::Tensor& weight,
                                          const at::Tensor& bias, const std::optional<at::Tensor>& pos_embed,
                                          const std::optional<at::Tensor>& pos_temporal) {
  static auto masked_patchify = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("mae_kernels::masked_patchify", "")
                                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  const bool video = weight.dim() == 5;
  TORCH_CHECK((weight.dim() == 4 || video) && imgs.dim() == weight.dim() && ids_keep.dim() == 2 &&
                  weight.size(0) > 0 && weight.size(-1) > 0 && weight.size(-2) > 0 && (!video || weight.size(2) > 0),
              "mae_kernels::masked_patch_embed: expected imgs [N, C, H, W] with a non-empty Conv2d weight "
              "[D, C, ph, pw] or imgs [N, C, T, H, W] with a Conv3d weight [D, C, u, ph, pw], and ids_keep [N, K], "
              "got ", imgs.sizes(), ", ", weight.sizes(), ", ", ids_keep.sizes());
  const int64_t N = ids_keep.size(0), K = ids_keep.size(1), D = weight.size(0);
  const int64_t u = video ? weight.size(2) : 1, ph = weight.size(-2), pw = weight.size(-1);
  const int64_t P = weight.numel() / D;  // D > 0 checked: an integer division by zero would kill the process
  const at::Tensor patches = masked_patchify.call(imgs, ids_keep, {u, ph, pw}).view({N * K, P});
  // (c, [frame,] p_row, p_col) -> ([frame,] p_row, p_col, c)
  const at::Tensor w = (video ? weight.permute({0, 2, 3, 4, 1}) : weight.permute({0, 2, 3, 1})).reshape({D, P});
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
  const at::Tensor ids = ids_keep.reshape({N * K});
  if (pos_temporal.has_value()) {
    TORCH_CHECK(pos_embed.has_value(), "mae_kernels::masked_patch_embed: pos_temporal needs the spatial pos_embed");
    const int64_t hw = pos_embed->size(-2);
    const at::Tensor spatial = pos_embed->reshape({hw, D}).index_select(0, ids.remainder(hw));
    const at::Tensor temporal = pos_temporal->reshape({-1, D}).index_select(0, ids.div(hw, "floor"));
    out = out + (spatial + temporal).view({N, K, D});  // spatial + temporal first, in their promoted dtype
  } else if (pos_embed.has_value()) {
    const int64_t L = (video ? imgs.size(2) / u : 1) * (imgs.size(-2) / ph) * (imgs.size(-1) / pw);
    const int64_t first = pos_embed->size(-2) - L;  // 1 when row 0 is the cls token's, else 0
    out = out + pos_embed->reshape({-1, D}).index_select(0, ids + first).view({N, K, D});
  }
  return out;
}

}  // namespace mae_kernels
