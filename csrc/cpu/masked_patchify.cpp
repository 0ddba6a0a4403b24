// CPU patchify / unpatchify / masked_patchify and its backward (a scatter into a zero image).
// All four are one gather or one scatter between an image (any strides) and [N, K, P] patch vectors
// (P = p*p*C in (p_row, p_col, c) order); ids_keep picks the K patches, or, when absent, K = L in order.
// Elements are copied as raw words of their size, so every dtype is bit-exact. Rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {
namespace {

// Calls f(word{}) with an unsigned integer type as wide as one element of t.
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

PatchLayout layout_of(int64_t C, int64_t p, int64_t W, at::IntArrayRef strides) {
  return PatchLayout{C, p, W / p, strides[0], strides[1], strides[2], strides[3]};
}

// out[n, k, j] = img[pixel of entry j of patch ids[n, k]]   (ids == nullptr: patch k).
template <typename word>
void gather_patches(const word* img, const int64_t* ids, PatchLayout lay, int64_t N, int64_t K, word* out) {
  const int64_t P = lay.p * lay.p * lay.C;
  at::parallel_for(0, N * K, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / K;
      const int64_t l = ids ? ids[i] : i % K;
      const word* src = img + lay.offset(n, l, 0);  // the patch's top-left pixel, channel 0
      word* dst = out + i * P;
      for (int64_t r = 0; r < lay.p; ++r)
        for (int64_t q = 0; q < lay.p; ++q)
          for (int64_t c = 0; c < lay.C; ++c) *dst++ = src[r * lay.s_h + q * lay.s_w + c * lay.s_c];
    }
  });
}

// img[pixel of entry j of patch ids[n, k]] = src[n, k, j]; patches are disjoint, so rows never collide.
template <typename word>
void scatter_patches(const word* src, const int64_t* ids, PatchLayout lay, int64_t N, int64_t K, word* img) {
  const int64_t P = lay.p * lay.p * lay.C;
  at::parallel_for(0, N * K, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / K;
      const int64_t l = ids ? ids[i] : i % K;
      const word* row = src + i * P;
      word* dst = img + lay.offset(n, l, 0);
      for (int64_t r = 0; r < lay.p; ++r)
        for (int64_t q = 0; q < lay.p; ++q)
          for (int64_t c = 0; c < lay.C; ++c) dst[r * lay.s_h + q * lay.s_w + c * lay.s_c] = *row++;
    }
  });
}

at::Tensor gather_cpu(const at::Tensor& imgs, const at::Tensor* ids_keep, int64_t p) {
  const int64_t N = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const int64_t K = ids_keep ? ids.size(1) : (H / p) * (W / p);
  auto out = at::empty({N, K, p * p * C}, imgs.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const PatchLayout lay = layout_of(C, p, W, imgs.strides());
  dispatch_on_width(imgs, [&](auto w) {
    using word = decltype(w);
    gather_patches(static_cast<const word*>(imgs.const_data_ptr()), ids_keep ? ids.const_data_ptr<int64_t>() : nullptr,
                   lay, N, K, static_cast<word*>(out.data_ptr()));
  });
  return out;
}

at::Tensor scatter_cpu(const at::Tensor& patches_in, const at::Tensor* ids_keep, int64_t p, int64_t H, int64_t W) {
  const at::Tensor patches = patches_in.contiguous();
  const int64_t N = patches.size(0), K = patches.size(1), C = patches.size(2) / (p * p);
  // Without ids_keep every pixel is written; with it, the removed patches stay zero.
  auto img = ids_keep ? at::zeros({N, C, H, W}, patches.options()) : at::empty({N, C, H, W}, patches.options());
  if (patches.numel() == 0) return img;
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const PatchLayout lay = layout_of(C, p, W, img.strides());
  dispatch_on_width(patches, [&](auto w) {
    using word = decltype(w);
    scatter_patches(static_cast<const word*>(patches.const_data_ptr()),
                    ids_keep ? ids.const_data_ptr<int64_t>() : nullptr, lay, N, K, static_cast<word*>(img.data_ptr()));
  });
  return img;
}

at::Tensor patchify_cpu(const at::Tensor& imgs, int64_t p) { return gather_cpu(imgs, nullptr, p); }

at::Tensor unpatchify_cpu(const at::Tensor& x, int64_t p, int64_t H, int64_t W) {
  return scatter_cpu(x, nullptr, p, H, W);
}

at::Tensor masked_patchify_cpu(const at::Tensor& imgs, const at::Tensor& ids_keep, int64_t p) {
  return gather_cpu(imgs, &ids_keep, p);
}

at::Tensor masked_patchify_backward_cpu(const at::Tensor& grad, const at::Tensor& ids_keep, int64_t p, int64_t H,
                                        int64_t W) {
  return scatter_cpu(grad, &ids_keep, p, H, W);
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("patchify", &patchify_cpu);
  m.impl("unpatchify", &unpatchify_cpu);
  m.impl("masked_patchify", &masked_patchify_cpu);
  m.impl("masked_patchify_backward", &masked_patchify_backward_cpu);
}

}  // namespace mae_kernels
