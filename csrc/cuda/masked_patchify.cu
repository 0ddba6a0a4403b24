// CUDA patchify / unpatchify / masked_patchify / masked_patchify_backward: checks, device guard, current
// stream, launch (allocation and dispatch on element width: csrc/masked_patchify_host.h; kernel:
// kernels/masked_patchify.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/aligned.h"
#include "cuda/kernels/masked_patchify.cuh"
#include "masked_patchify_host.h"

namespace mae_kernels {

// The element's bits rounded from fp32 (at::Half / at::BFloat16: round to nearest even, as ATen's casts).
// Outside the anonymous namespace: the kernel instances it names keep external symbols (the CUDA emulator's
// launch statistics read them).
template <typename out_t>
struct RoundTo {
  __host__ __device__ __forceinline__ static uint16_t apply(float x) { return out_t(x).x; }
};

namespace {

constexpr int kThreads = 256;

// Whether copy_patches_vec_kernel may copy between `image` and the patch vectors `patches`: every address it forms
// must be a multiple of 16 bytes, so the pixel rows are contiguous and pw, the strides and both base addresses are
// multiples of one vector (16 / sizeof(word) elements); 2- and 4-byte elements, 1 or 3 channels (its instances).
template <typename word>
bool vector_copy_applies(const PatchLayout& lay, const word* image, const word* patches) {
  constexpr int64_t V = 16 / static_cast<int64_t>(sizeof(word));
  if ((sizeof(word) != 2 && sizeof(word) != 4) || (lay.C != 1 && lay.C != 3) || lay.s_w != 1 || lay.pw % V != 0) {
    return false;
  }
  if (lay.s_n % V != 0 || lay.s_t % V != 0 || lay.s_h % V != 0 || (lay.C > 1 && lay.s_c % V != 0)) return false;
  return aligned(image, 16) && aligned(patches, 16);
}

template <bool kToImage, typename word, int kC>
void launch_vector_copy(const word* src, const int64_t* ids, const PatchLayout& lay, int64_t rows, int64_t K,
                        word* dst, int64_t cap) {
  constexpr int64_t V = 16 / static_cast<int64_t>(sizeof(word));
  const int64_t groups = lay.P() / (V * kC), items = rows * groups;  // an item: V columns x kC channels
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, cap));
  copy_patches_vec_kernel<kToImage, word, kC, kThreads><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      src, ids, lay, FastDivmod(K), FastDivmod(groups), FastDivmod(lay.pw / V), items, lay.P(), dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether the masked scatter runs as scatter_bands_vec_kernel, writing the whole image (zeros included): the
// 16-byte conditions, and the band's patch map within the default 48 KiB of shared memory.
template <typename word>
bool bands_scatter_applies(const PatchLayout& lay, const word* image, const word* patches) {
  return vector_copy_applies(lay, image, patches) && lay.grid_w * int64_t(sizeof(int32_t)) <= 48 * 1024;
}

template <typename word, int kC>
void launch_bands_scatter(const word* src, const int64_t* ids, const PatchLayout& lay, int64_t N, int64_t K,
                          word* dst, int64_t cap) {
  constexpr int64_t V = 16 / static_cast<int64_t>(sizeof(word));
  // Bands per sample: t * h; t = T / u read from the fresh contiguous image's strides (s_c = T * s_t; images: 1).
  const int64_t per_sample = (lay.s_t != 0 ? lay.s_c / lay.s_t / lay.u : 1) * (lay.grid_hw / lay.grid_w);
  const int64_t bands = N * per_sample, runs_w = lay.grid_w * lay.pw / V, items = lay.u * lay.ph * runs_w;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(bands, cap));
  scatter_bands_vec_kernel<word, kC, kThreads>
      <<<blocks, kThreads, lay.grid_w * sizeof(int32_t), at::cuda::getCurrentCUDAStream()>>>(
          src, ids, lay, K, bands, items, FastDivmod(per_sample), FastDivmod(runs_w), FastDivmod(lay.pw / V), dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether copy_patches_cast_vec_kernel may gather from the fp32 `image` into the 16-bit `patches`: 16-byte loads
// of 8-column runs (pixel rows contiguous, pw a multiple of 8, the strides multiples of 4 elements) and 16-byte
// stores (both base addresses aligned); 1 or 3 channels (its instances).
bool cast_vector_applies(const PatchLayout& lay, const float* image, const void* patches) {
  if ((lay.C != 1 && lay.C != 3) || lay.s_w != 1 || lay.pw % 8 != 0) return false;
  if (lay.s_n % 4 != 0 || lay.s_t % 4 != 0 || lay.s_h % 4 != 0 || (lay.C > 1 && lay.s_c % 4 != 0)) return false;
  return aligned(image, 16) && aligned(patches, 16);
}

template <typename out_t, int kC>
void launch_cast_vector_copy(const float* src, const int64_t* ids, const PatchLayout& lay, int64_t rows, int64_t K,
                             out_t* dst, int64_t cap) {
  const int64_t groups = lay.P() / (8 * kC), items = rows * groups;  // an item: 8 columns x kC channels
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, cap));
  using Round = RoundTo<out_t>;  // (the CUDA emulator's launch rewrite takes no nested template arguments)
  copy_patches_cast_vec_kernel<kC, Round, kThreads><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      src, ids, lay, FastDivmod(K), FastDivmod(groups), FastDivmod(lay.pw / 8), items, lay.P(),
      reinterpret_cast<uint16_t*>(dst));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// in_t == out_t: raw words (a copy); else a gather into another dtype (typed float / at::Half / at::BFloat16).
template <bool kToImage, typename in_t, typename out_t>
void launch_copy(const in_t* src, const int64_t* ids, PatchLayout lay, int64_t N, int64_t K, out_t* dst) {
  // Blocks: one per row (16-byte path: per 256 items; masked scatter: per band) up to 8 per SM (a full SM at
  // kThreads = 256), each then walks grid-stride.
  const int64_t rows = N * K;
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  if constexpr (std::is_same_v<in_t, out_t> && (sizeof(in_t) == 2 || sizeof(in_t) == 4)) {
    if (kToImage && ids && bands_scatter_applies(lay, dst, src)) {
      if (lay.C == 3) return launch_bands_scatter<in_t, 3>(src, ids, lay, N, K, dst, cap);
      return launch_bands_scatter<in_t, 1>(src, ids, lay, N, K, dst, cap);
    }
    if (vector_copy_applies(lay, kToImage ? dst : src, kToImage ? src : dst)) {
      if (lay.C == 3) return launch_vector_copy<kToImage, in_t, 3>(src, ids, lay, rows, K, dst, cap);
      return launch_vector_copy<kToImage, in_t, 1>(src, ids, lay, rows, K, dst, cap);
    }
  } else if constexpr (!kToImage && std::is_same_v<in_t, float> && sizeof(out_t) == 2) {
    if (cast_vector_applies(lay, src, dst)) {  // autocast's fp32 images -> fp16 / bf16 patch vectors
      if (lay.C == 3) return launch_cast_vector_copy<out_t, 3>(src, ids, lay, rows, K, dst, cap);
      return launch_cast_vector_copy<out_t, 1>(src, ids, lay, rows, K, dst, cap);
    }
  }
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(rows, cap));
  copy_patches_kernel<kToImage, in_t, kThreads, out_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      src, ids, lay, FastDivmod(K), rows, lay.P(), dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gather_cuda(const at::Tensor& imgs, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                       std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(imgs.is_cuda(), "mae_kernels: imgs must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(imgs.device());
  return gather_patches(imgs, ids_keep, patch_size, [](auto... args) { launch_copy<false>(args...); }, dtype);
}

at::Tensor scatter_cuda(const at::Tensor& patches, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                        at::IntArrayRef image_size) {
  TORCH_CHECK(patches.is_cuda(), "mae_kernels: the patch vectors must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(patches.device());
  return scatter_patches(
      patches, ids_keep, patch_size, image_size, [](auto... args) { launch_copy<true>(args...); },
      [](const PatchLayout& lay, const auto* src, auto* dst) {  // launch_copy's choice for a masked scatter
        using word = std::remove_cv_t<std::remove_pointer_t<decltype(dst)>>;
        if constexpr (sizeof(word) == 2 || sizeof(word) == 4) return bands_scatter_applies(lay, dst, src);
        return false;
      });
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
