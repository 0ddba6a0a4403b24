// CUDA masked_patch_embed_bias_grad: checks, device guard, current stream, dtype dispatch, launch of the row pass
// (the GEMM-dtype copy and per-chunk column sums) and the finishing sum. Kernels:
// kernels/masked_patch_embed_bias_grad.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/aligned.h"
#include "cuda/kernels/masked_patch_embed_bias_grad.cuh"
#include "masked_patch_embed_bias_grad_host.h"

namespace mae_kernels {
namespace {

constexpr int64_t kMaxChunkBlocks = int64_t(1) << 20;  // grid-stride beyond this

template <bool kVector, typename g_t, typename out_t>
void launch_rows(const at::Tensor& grad, const BiasGrad& b, bool write) {
  constexpr int V = cuda::bias_grad_width<kVector, g_t, out_t>();
  const int64_t packs = (b.D + V - 1) / V;
  const int threads = static_cast<int>(std::min<int64_t>(cuda::kBiasGradThreads, (packs + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(std::min(b.chunks, kMaxChunkBlocks)),
                  static_cast<unsigned>((packs + threads - 1) / threads));
  cuda::bias_grad_rows_kernel<kVector, g_t, out_t><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grad.const_data_ptr<g_t>(), grad.stride(0), grad.stride(1), grad.stride(2), b.K, b.D, FastDivmod(b.KB),
      b.chunks, write ? b.gemm_grad.data_ptr<out_t>() : nullptr, b.partial.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> masked_patch_embed_bias_grad_cuda(const at::Tensor& grad,
                                                                     at::ScalarType gemm_dtype, bool write,
                                                                     at::ScalarType bias_dtype) {
  TORCH_CHECK(grad.is_cuda(), "mae_kernels::masked_patch_embed_bias_grad (cuda): grad must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(grad.device());
  const BiasGrad b = bias_grad_setup(grad, gemm_dtype, write, bias_dtype);
  if (b.D == 0) return {b.gemm_grad, b.grad_bias};
  if (b.chunks > 0) {
    dispatch_bias_grad_dtype(grad.scalar_type(), [&](auto g) {
      using g_t = decltype(g);
      // Without a copy the output type is unused: g_t keeps the instantiations down.
      dispatch_bias_grad_dtype(write ? gemm_dtype : grad.scalar_type(), [&](auto o) {
        using out_t = decltype(o);
        constexpr int V = cuda::bias_grad_width<true, g_t, out_t>();
        // 16-byte accesses when every row starts on its pack's alignment, else one element each.
        const bool vector = grad.stride(2) == 1 && b.D % V == 0 && grad.stride(0) % V == 0 &&
                            grad.stride(1) % V == 0 && aligned(grad.const_data_ptr(), V * sizeof(g_t)) &&
                            (!write || aligned(b.gemm_grad.const_data_ptr(), V * sizeof(out_t)));
        if (vector) {
          launch_rows<true, g_t, out_t>(grad, b, write);
        } else {
          launch_rows<false, g_t, out_t>(grad, b, write);
        }
      });
    });
  }
  dispatch_bias_grad_dtype(bias_dtype, [&](auto t) {
    using b_t = decltype(t);
    const dim3 threads(cuda::kBiasFinishCols, cuda::kBiasFinishLanes);
    cuda::bias_grad_finish_kernel<b_t>
        <<<static_cast<unsigned>((b.D + cuda::kBiasFinishCols - 1) / cuda::kBiasFinishCols), threads, 0,
           at::cuda::getCurrentCUDAStream()>>>(
            b.partial.const_data_ptr<float>(), b.chunks, b.D, b.grad_bias.data_ptr<b_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {b.gemm_grad, b.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("masked_patch_embed_bias_grad", &masked_patch_embed_bias_grad_cuda);
}

}  // namespace mae_kernels
