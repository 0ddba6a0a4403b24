// masked_patch_embed on CPU and CUDA: the kept patches (images) or tubelets (videos) gathered by
// mae_kernels::masked_patchify (only their pixels are read), one GEMM with the bias (at::addmm: multi-threaded on
// CPU, cuBLAS on CUDA), then the positional rows of the kept tokens added. The Conv2d weight [D, C, ph, pw] /
// Conv3d weight [D, C, u, ph, pw] is permuted to the patch-vector order (frame, p_row, p_col, c).
// Positional rows: pos_embed [1, R, D] alone, R = L or 1 + L (a leading cls row is skipped): row R - L + l;
// or the separable pair pos_embed = spatial [1, hw, D] and pos_temporal [1, t, D]: spatial[l % hw] +
// temporal[l / hw], read per kept token by one epilogue kernel of the backend over the GEMM output (neither the
// gathered rows nor the [L, D] sum are formed), in place when the output dtype is the GEMM's.
// GEMM dtype: weight's. imgs may have another floating dtype (autocast's fp32 images with a bf16 weight): the gather
// then rounds each kept pixel to the GEMM dtype as it reads it, the same values as imgs.to(dtype) first, without
// converting the removed patches' pixels. Output dtype: the GEMM dtype promoted with the positional tables' (as the
// reference's add).
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace mae_kernels {

// The positional epilogue's operands, for the backend's kernel (add_positions below): out[r] = gemm[r] +
// table[first + ids[r]], or with temporal defined gemm[r] + (table[ids[r] % hw] + temporal[ids[r] / hw]); each add
// in fp32, the pair's sum rounded to the tables' dtype, the result rounded once to out's (eager's order and
// promotion, so results are bit-identical to `out + rows`). All [rows, D] / [R, D] tensors contiguous.
struct PosEpilogue {
  at::Tensor gemm;      // [N * K, D], the GEMM's (weight's) dtype
  at::Tensor ids;       // [N * K] int64
  at::Tensor table;     // pos_embed [R, D], or the spatial [hw, D] of the separable pair
  at::Tensor temporal;  // undefined, or the pair's temporal [t, D] in table's dtype
  at::Tensor out;       // [N * K, D], promote(gemm, table); gemm itself when the dtypes agree
  int64_t first = 0, hw = 1, D = 0;
};

// f(g, p) with g, p value-initialised fp32 / fp16 / bf16 of the GEMM output's and the tables' dtypes (the only
// dtypes the op accepts; the output type is their promotion).
template <typename F>
void dispatch_pos_epilogue(const PosEpilogue& e, F&& f) {
  const auto with = [](at::ScalarType t, auto&& g) {
    switch (t) {
      case at::kFloat: g(float{}); break;
      case at::kHalf: g(at::Half{}); break;
      case at::kBFloat16: g(at::BFloat16{}); break;
      default: TORCH_CHECK(false, "mae_kernels::masked_patch_embed: unsupported dtype ", t);
    }
  };
  with(e.gemm.scalar_type(), [&](auto g) { with(e.table.scalar_type(), [&](auto p) { f(g, p); }); });
}

// add_positions(const PosEpilogue&): the backend's epilogue (csrc/cpu, csrc/cuda), called when there are rows.
template <typename AddPositions>
at::Tensor masked_patch_embed_gemm(const at::Tensor& imgs, const at::Tensor& ids_keep, const at::Tensor& weight,
                                   const at::Tensor& bias, const std::optional<at::Tensor>& pos_embed,
                                   const std::optional<at::Tensor>& pos_temporal, AddPositions&& add_positions) {
  static auto masked_patchify = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("mae_kernels::masked_patchify", "")
                                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                                      std::optional<at::ScalarType>)>();
  const bool video = weight.dim() == 5;
  TORCH_CHECK((weight.dim() == 4 || video) && imgs.dim() == weight.dim() && ids_keep.dim() == 2 &&
                  weight.size(0) > 0 && weight.size(-1) > 0 && weight.size(-2) > 0 && (!video || weight.size(2) > 0),
              "mae_kernels::masked_patch_embed: expected imgs [N, C, H, W] with a non-empty Conv2d weight "
              "[D, C, ph, pw] or imgs [N, C, T, H, W] with a Conv3d weight [D, C, u, ph, pw], and ids_keep [N, K], "
              "got ", imgs.sizes(), ", ", weight.sizes(), ", ", ids_keep.sizes());
  const int64_t N = ids_keep.size(0), K = ids_keep.size(1), D = weight.size(0);
  const int64_t u = video ? weight.size(2) : 1, ph = weight.size(-2), pw = weight.size(-1);
  const int64_t P = weight.numel() / D;  // D > 0 checked: an integer division by zero would kill the process
  const at::Tensor patches = masked_patchify.call(imgs, ids_keep, {u, ph, pw}, weight.scalar_type()).view({N * K, P});
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
  if (!pos_embed.has_value()) {
    TORCH_CHECK(!pos_temporal.has_value(),
                "mae_kernels::masked_patch_embed: pos_temporal needs the spatial pos_embed");
    return out.view({N, K, D});
  }
  PosEpilogue e;
  e.gemm = out.contiguous();  // addmm's fresh output: already contiguous
  e.ids = ids_keep.reshape({N * K}).contiguous();
  e.D = D;
  if (pos_temporal.has_value()) {
    // The pair in its promoted dtype (exact: fp16 and bf16 values are fp32 values), as eager's spatial + temporal.
    const at::ScalarType st = at::promote_types(pos_embed->scalar_type(), pos_temporal->scalar_type());
    e.hw = pos_embed->size(-2);
    e.table = pos_embed->reshape({e.hw, D}).to(st).contiguous();
    e.temporal = pos_temporal->reshape({-1, D}).to(st).contiguous();
  } else {
    const int64_t L = (video ? imgs.size(2) / u : 1) * (imgs.size(-2) / ph) * (imgs.size(-1) / pw);
    e.first = pos_embed->size(-2) - L;  // 1 when row 0 is the cls token's, else 0
    e.table = pos_embed->reshape({-1, D}).contiguous();
  }
  const at::ScalarType out_dtype = at::promote_types(e.gemm.scalar_type(), e.table.scalar_type());
  // In place over the GEMM output when it already has the output dtype (a fresh tensor of this call).
  e.out = out_dtype == e.gemm.scalar_type() ? e.gemm : at::empty({N * K, D}, e.gemm.options().dtype(out_dtype));
  if (N * K > 0) add_positions(e);
  return e.out.view({N, K, D});
}

}  // namespace mae_kernels
