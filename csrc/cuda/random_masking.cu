// CUDA random masking: checks, device guard, current stream, choice of the copy word, launch.
// The kernels (csrc/cuda/kernels/random_masking.cuh) know nothing of torch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/random_masking.cuh"

namespace mae_kernels {
namespace {

// The widest word (16, 8, 4, 2, 1 bytes) dividing every byte count and address in `values`.
int word_bytes(std::initializer_list<int64_t> values) {
  int64_t acc = 16;
  for (int64_t v : values) acc |= v;
  for (int w = 16; w > 1; w >>= 1) {
    if ((acc & (w - 1)) == 0) return w;
  }
  return 1;
}

template <typename F>
void with_word(int w, F&& f) {
  switch (w) {
    case 16: f(uint4{}); break;
    case 8: f(uint64_t{}); break;
    case 4: f(uint32_t{}); break;
    case 2: f(uint16_t{}); break;
    default: f(uint8_t{}); break;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> random_masking_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& noise_in, int64_t len_keep, int64_t seed,
    int64_t offset) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 3, "random_masking: x must be a 3-D CUDA tensor");
  const int64_t N = x_in.size(0), L = x_in.size(1), D = x_in.size(2);
  TORCH_CHECK(L <= cuda::kRandomMaskingMaxL, "random_masking (cuda): L must be at most ",
              cuda::kRandomMaskingMaxL, ", got ", L);
  TORCH_CHECK(len_keep >= 0 && len_keep <= L, "random_masking: len_keep must be in [0, L]");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = (D > 1 && x_in.stride(2) != 1) ? x_in.contiguous() : x_in;
  at::Tensor noise;
  if (noise_in.has_value()) {
    TORCH_CHECK(noise_in->scalar_type() == at::kFloat && noise_in->device() == x.device(),
                "random_masking: noise must be float32 on x's device");
    noise = noise_in->contiguous();
  }
  auto x_masked = at::empty({N, len_keep, D}, x.options());
  auto mask = at::empty({N, L}, x.options().dtype(at::kFloat));
  auto ids_restore = at::empty({N, L}, x.options().dtype(at::kLong));
  auto ids_keep = at::empty({N, len_keep}, x.options().dtype(at::kLong));
  if (N == 0 || L == 0) return {x_masked, mask, ids_restore, ids_keep};
  int64_t P = 1;
  while (P < L) P <<= 1;
  const size_t smem = static_cast<size_t>(P) * sizeof(int64_t);
  const int64_t es = x.element_size();
  const int64_t row_bytes = D * es, sxn = x.stride(0) * es, sxl = x.stride(1) * es;
  const int w = word_bytes({row_bytes, sxn, sxl, reinterpret_cast<int64_t>(x.const_data_ptr()),
                            reinterpret_cast<int64_t>(x_masked.data_ptr())});
  auto stream = at::cuda::getCurrentCUDAStream();
  with_word(w, [&](auto word) {
    using W = decltype(word);
    auto kernel = cuda::random_masking_forward_kernel<W>;
    if (smem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    kernel<<<static_cast<unsigned>(N), cuda::kRandomMaskingThreads, smem, stream>>>(
        static_cast<const char*>(x.const_data_ptr()),
        noise.defined() ? noise.const_data_ptr<float>() : nullptr, static_cast<char*>(x_masked.data_ptr()),
        mask.data_ptr<float>(), ids_restore.data_ptr<int64_t>(), ids_keep.data_ptr<int64_t>(), L, len_keep,
        row_bytes, sxn, sxl, P, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {x_masked, mask, ids_restore, ids_keep};
}

at::Tensor random_masking_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_keep_in, int64_t L) {
  TORCH_CHECK(grad_in.is_cuda() && grad_in.dim() == 3, "random_masking_backward: grad must be a 3-D CUDA tensor");
  TORCH_CHECK(L <= cuda::kRandomMaskingMaxL, "random_masking_backward (cuda): L must be at most ",
              cuda::kRandomMaskingMaxL, ", got ", L);
  c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids_keep = ids_keep_in.contiguous();
  const int64_t N = grad.size(0), K = grad.size(1), D = grad.size(2);
  auto grad_x = at::empty({N, L, D}, grad.options());
  if (grad_x.numel() == 0) return grad_x;
  const int64_t row_bytes = D * grad.element_size();
  const int w = word_bytes({row_bytes, reinterpret_cast<int64_t>(grad.const_data_ptr()),
                            reinterpret_cast<int64_t>(grad_x.data_ptr())});
  auto stream = at::cuda::getCurrentCUDAStream();
  with_word(w, [&](auto word) {
    using W = decltype(word);
    cuda::random_masking_backward_kernel<W>
        <<<static_cast<unsigned>(N), cuda::kRandomMaskingThreads, L * sizeof(int32_t), stream>>>(
            static_cast<const char*>(grad.const_data_ptr()), ids_keep.const_data_ptr<int64_t>(),
            static_cast<char*>(grad_x.data_ptr()), L, K, row_bytes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("random_masking", &random_masking_cuda);
  m.impl("random_masking_backward", &random_masking_backward_cuda);
}

}  // namespace mae_kernels
