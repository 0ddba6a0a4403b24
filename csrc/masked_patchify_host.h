// Host side of the patchify family shared by the CPU and CUDA backends: output allocation, the image layout and
// the dispatch on element width. All four ops are one gather (image -> [N, K, P] patch vectors, P = p*p*C) or one
// scatter (the inverse); ids_keep picks the K patches or, when absent, K = L in order. A backend passes the copy
// to run, called as copy(src, ids, lay, N, K, dst) with word-typed pointers: elements move as raw words of their
// size, so every dtype is bit-exact.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {

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

inline PatchLayout layout_of(int64_t C, int64_t p, int64_t W, at::IntArrayRef strides) {
  return PatchLayout{C, p, W / p, strides[0], strides[1], strides[2], strides[3]};
}

// out [N, K, P] contiguous, out[n, k] = patch ids_keep[n, k] (or k) of imgs [N, C, H, W] (any strides).
template <typename Copy>
at::Tensor gather_patches(const at::Tensor& imgs, const at::Tensor* ids_keep, int64_t p, Copy copy) {
  const int64_t N = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const int64_t K = ids_keep ? ids.size(1) : (H / p) * (W / p);
  auto out = at::empty({N, K, p * p * C}, imgs.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const PatchLayout lay = layout_of(C, p, W, imgs.strides());
  dispatch_on_width(imgs, [&](auto w) {
    using word = decltype(w);
    copy(static_cast<const word*>(imgs.const_data_ptr()), ids_keep ? ids.const_data_ptr<int64_t>() : nullptr, lay,
         N, K, static_cast<word*>(out.data_ptr()));
  });
  return out;
}

// The image [N, C, H, W] holding the patch vectors [N, K, P] at patches ids_keep (or all L in order).
template <typename Copy>
at::Tensor scatter_patches(const at::Tensor& patches_in, const at::Tensor* ids_keep, int64_t p, int64_t H,
                           int64_t W, Copy copy) {
  const at::Tensor patches = patches_in.contiguous();
  const int64_t N = patches.size(0), K = patches.size(1), C = patches.size(2) / (p * p);
  // Without ids_keep every pixel is written; with it, the removed patches stay zero.
  auto img = ids_keep ? at::zeros({N, C, H, W}, patches.options()) : at::empty({N, C, H, W}, patches.options());
  if (patches.numel() == 0) return img;
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const PatchLayout lay = layout_of(C, p, W, img.strides());
  dispatch_on_width(patches, [&](auto w) {
    using word = decltype(w);
    copy(static_cast<const word*>(patches.const_data_ptr()), ids_keep ? ids.const_data_ptr<int64_t>() : nullptr,
         lay, N, K, static_cast<word*>(img.data_ptr()));
  });
  return img;
}

// The four registered ops of a backend whose gather(imgs, ids_keep*, p) and scatter(patches, ids_keep*, p, H, W)
// check the inputs, guard the device and call gather_patches / scatter_patches above.
template <at::Tensor (*gather)(const at::Tensor&, const at::Tensor*, int64_t),
          at::Tensor (*scatter)(const at::Tensor&, const at::Tensor*, int64_t, int64_t, int64_t)>
struct PatchifyOps {
  static at::Tensor patchify(const at::Tensor& imgs, int64_t p) { return gather(imgs, nullptr, p); }
  static at::Tensor unpatchify(const at::Tensor& x, int64_t p, int64_t H, int64_t W) {
    return scatter(x, nullptr, p, H, W);
  }
  static at::Tensor masked_patchify(const at::Tensor& imgs, const at::Tensor& ids_keep, int64_t p) {
    return gather(imgs, &ids_keep, p);
  }
  static at::Tensor masked_patchify_backward(const at::Tensor& grad, const at::Tensor& ids_keep, int64_t p,
                                             int64_t H, int64_t W) {
    return scatter(grad, &ids_keep, p, H, W);
  }
};

}  // namespace mae_kernels
