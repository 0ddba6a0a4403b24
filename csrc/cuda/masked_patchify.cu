// CUDA patchify / unpatchify / masked_patchify / masked_patchify_backward: checks, device guard, current
// stream, dispatch on element width, launch (kernels in kernels/masked_patchify.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/kernels/masked_patchify.cuh"

namespace mae_kernels {
namespace {

constexpr int kThreads = 256;

template <typename F>
void dispatch_on_width(const at::Tensor& t, F f) {
  switch (t.element_size()) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
    default: TORCH_CHECK(false, "mae_kernels: unsupported element size ", t.element_size());
  }
}

int64_t num_blocks(int64_t total) {
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, cap));
}

PatchLayout layout_of(int64_t C, int64_t p, int64_t W, at::IntArrayRef strides) {
  return PatchLayout{C, p, W / p, strides[0], strides[1], strides[2], strides[3]};
}

at::Tensor gather_cuda(const at::Tensor& imgs, const at::Tensor* ids_keep, int64_t p) {
  TORCH_CHECK(imgs.is_cuda(), "mae_kernels: imgs must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(imgs.device());
  const int64_t N = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const int64_t K = ids_keep ? ids.size(1) : (H / p) * (W / p);
  auto out = at::empty({N, K, p * p * C}, imgs.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const PatchLayout lay = layout_of(C, p, W, imgs.strides());
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_on_width(imgs, [&](auto w) {
    using word = decltype(w);
    gather_patches_kernel<word><<<num_blocks(out.numel()), kThreads, 0, stream>>>(
        static_cast<const word*>(imgs.const_data_ptr()), ids_keep ? ids.const_data_ptr<int64_t>() : nullptr, lay, N,
        K, static_cast<word*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor scatter_cuda(const at::Tensor& patches_in, const at::Tensor* ids_keep, int64_t p, int64_t H, int64_t W) {
  TORCH_CHECK(patches_in.is_cuda(), "mae_kernels: the patch vectors must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(patches_in.device());
  const at::Tensor patches = patches_in.contiguous();
  const int64_t N = patches.size(0), K = patches.size(1), C = patches.size(2) / (p * p);
  // Without ids_keep every pixel is written; with it, the removed patches stay zero.
  auto img = ids_keep ? at::zeros({N, C, H, W}, patches.options()) : at::empty({N, C, H, W}, patches.options());
  if (patches.numel() == 0) return img;
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const PatchLayout lay = layout_of(C, p, W, img.strides());
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_on_width(patches, [&](auto w) {
    using word = decltype(w);
    scatter_patches_kernel<word><<<num_blocks(patches.numel()), kThreads, 0, stream>>>(
        static_cast<const word*>(patches.const_data_ptr()), ids_keep ? ids.const_data_ptr<int64_t>() : nullptr, lay,
        N, K, static_cast<word*>(img.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return img;
}

at::Tensor patchify_cuda(const at::Tensor& imgs, int64_t p) { return gather_cuda(imgs, nullptr, p); }

at::Tensor unpatchify_cuda(const at::Tensor& x, int64_t p, int64_t H, int64_t W) {
  return scatter_cuda(x, nullptr, p, H, W);
}

at::Tensor masked_patchify_cuda(const at::Tensor& imgs, const at::Tensor& ids_keep, int64_t p) {
  return gather_cuda(imgs, &ids_keep, p);
}

at::Tensor masked_patchify_backward_cuda(const at::Tensor& grad, const at::Tensor& ids_keep, int64_t p, int64_t H,
                                         int64_t W) {
  return scatter_cuda(grad, &ids_keep, p, H, W);
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("patchify", &patchify_cuda);
  m.impl("unpatchify", &unpatchify_cuda);
  m.impl("masked_patchify", &masked_patchify_cuda);
  m.impl("masked_patchify_backward", &masked_patchify_backward_cuda);
}

}  // namespace mae_kernels
