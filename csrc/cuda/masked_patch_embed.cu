// CUDA masked patch embedding: the fused gather kernel (masked_patchify) feeding cuBLAS through at::addmm,
// then the positional epilogue kernel (kernels/masked_patch_embed.cuh) over the GEMM output (see
// masked_patch_embed_gemm.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/aligned.h"
#include "cuda/kernels/masked_patch_embed.cuh"
#include "masked_patch_embed_gemm.h"

namespace mae_kernels {
namespace {

constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride beyond this

template <bool kVector, typename g_t, typename p_t>
void launch_pos_epilogue(const PosEpilogue& e, int64_t V) {
  using out_t = typename cuda::PosEpilogueOut<g_t, p_t>::type;
  const int64_t rows = e.gemm.size(0), vecs = e.D / V, items = rows * vecs;
  const int64_t blocks = std::min<int64_t>((items + cuda::kPosEpilogueThreads - 1) / cuda::kPosEpilogueThreads,
                                           kMaxBlocks);
  cuda::pos_embed_epilogue_kernel<kVector, g_t, p_t>
      <<<static_cast<unsigned>(blocks), cuda::kPosEpilogueThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          e.gemm.const_data_ptr<g_t>(), e.ids.const_data_ptr<int64_t>(), e.table.const_data_ptr<p_t>(),
          e.temporal.defined() ? e.temporal.const_data_ptr<p_t>() : nullptr, e.first, FastDivmod(e.hw),
          FastDivmod(vecs), items, e.D, e.out.data_ptr<out_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void add_positions_cuda(const PosEpilogue& e) {
  dispatch_pos_epilogue(e, [&](auto g, auto p) {
    using g_t = decltype(g);
    using p_t = decltype(p);
    using out_t = typename cuda::PosEpilogueOut<g_t, p_t>::type;
    constexpr int V = cuda::pos_epilogue_width<true, g_t, p_t, out_t>();
    // 16-byte accesses when every row of every operand starts on its pack's alignment, else one element each.
    bool vector = e.D % V == 0 && aligned(e.gemm.const_data_ptr(), V * sizeof(g_t)) &&
                  aligned(e.table.const_data_ptr(), V * sizeof(p_t)) &&
                  aligned(e.out.const_data_ptr(), V * sizeof(out_t));
    if (e.temporal.defined()) vector = vector && aligned(e.temporal.const_data_ptr(), V * sizeof(p_t));
    if (vector) {
      launch_pos_epilogue<true, g_t, p_t>(e, V);
    } else {
      launch_pos_epilogue<false, g_t, p_t>(e, 1);
    }
  });
}

at::Tensor masked_patch_embed_cuda(const at::Tensor& imgs, const at::Tensor& ids_keep, const at::Tensor& weight,
                                   const at::Tensor& bias, const std::optional<at::Tensor>& pos_embed,
                                   const std::optional<at::Tensor>& pos_temporal) {
  TORCH_CHECK(imgs.is_cuda(), "mae_kernels: imgs must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(imgs.device());
  return masked_patch_embed_gemm(imgs, ids_keep, weight, bias, pos_embed, pos_temporal, add_positions_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("masked_patch_embed", &masked_patch_embed_cuda);
}

}  // namespace mae_kernels
