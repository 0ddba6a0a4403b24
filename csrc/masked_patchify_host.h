// Host side of the patchify family shared by the CPU and CUDA backends: output allocation, the sample layout and
// the dispatch on element width. All four ops are one gather (images [N, C, H, W] or videos [N, C, T, H, W] ->
// [N, K, P] patch vectors, P = u*ph*pw*C) or one scatter (the inverse); ids_keep picks the K patches or, when
// absent, K = L in order. patch_size is [u, ph, pw] (u = 1 for images); image_size is [H, W] or [T, H, W] and
// decides the output's rank. A backend passes the copy to run, called as copy(src, ids, lay, N, K, dst) with
// word-typed pointers: elements move as raw words of their size, so every dtype is bit-exact. A gather into
// another dtype (masked_patchify's dtype) calls it with typed pointers (float, at::Half, at::BFloat16) instead:
// each element is then rounded once, as `imgs.to(dtype)` would round it.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <type_traits>

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

// Calls f(t{}) with t the C++ type of a floating-point dtype masked_patchify may convert from or to.
template <typename F>
void dispatch_float(at::ScalarType type, F f) {
  switch (type) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(at::Half{});
    case at::kBFloat16: return f(at::BFloat16{});
    default: TORCH_CHECK(false, "mae_kernels::masked_patchify: dtype conversion supports float32, float16 and "
                                "bfloat16, got ", type);
  }
}

// [u, ph, pw], checked (validation proper lives in Python; this only keeps a malformed call from indexing memory).
inline void check_patch_size(at::IntArrayRef patch_size) {
  TORCH_CHECK(patch_size.size() == 3 && patch_size[0] >= 1 && patch_size[1] >= 1 && patch_size[2] >= 1,
              "mae_kernels: patch_size must be [u, ph, pw] with positive entries (u = 1 for images), got ",
              patch_size);
}

// The layout of x ([N, C, H, W] or [N, C, T, H, W], any strides; a 4-D x is one frame: time stride 0).
inline PatchLayout layout_of(const at::Tensor& x, at::IntArrayRef patch_size) {
  check_patch_size(patch_size);
  const bool video = x.dim() == 5;
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, "mae_kernels: expected [N, C, H, W] or [N, C, T, H, W], got ",
              x.sizes());
  TORCH_CHECK(video || patch_size[0] == 1, "mae_kernels: images [N, C, H, W] take patch_size [1, ph, pw], got ",
              patch_size);
  const int64_t h = x.size(-2) / patch_size[1], w = x.size(-1) / patch_size[2];
  return PatchLayout{x.size(1), patch_size[0], patch_size[1], patch_size[2], h, w, x.stride(0), x.stride(1),
                     video ? x.stride(2) : 0, x.stride(-2), x.stride(-1)};
}

inline int64_t num_patches(const at::Tensor& x, at::IntArrayRef patch_size) {
  const int64_t t = x.dim() == 5 ? x.size(2) / patch_size[0] : 1;
  return t * (x.size(-2) / patch_size[1]) * (x.size(-1) / patch_size[2]);
}

// out [N, K, P] contiguous, out[n, k] = patch ids_keep[n, k] (or k) of imgs (any strides), in dtype (None: imgs').
template <typename Copy>
at::Tensor gather_patches(const at::Tensor& imgs, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                          Copy copy, std::optional<at::ScalarType> dtype = std::nullopt) {
  const PatchLayout lay = layout_of(imgs, patch_size);
  const int64_t N = imgs.size(0);
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const int64_t K = ids_keep ? ids.size(1) : num_patches(imgs, patch_size);
  const at::ScalarType out_type = dtype.value_or(imgs.scalar_type());
  auto out = at::empty({N, K, lay.P()},
                       imgs.options().dtype(out_type).memory_format(at::MemoryFormat::Contiguous));
  const int64_t* id_ptr = ids_keep ? ids.const_data_ptr<int64_t>() : nullptr;
  if (out_type != imgs.scalar_type()) {
    // Checked before the empty return, so that a bad dtype fails at every size.
    dispatch_float(imgs.scalar_type(), [&](auto in) {
      dispatch_float(out_type, [&](auto o) {
        using in_t = decltype(in);
        using out_t = decltype(o);
        // Equal types take the word copy below (no typed instances of the copy kernels for them).
        if constexpr (!std::is_same_v<in_t, out_t>) {
          if (out.numel() != 0) {
            copy(static_cast<const in_t*>(imgs.const_data_ptr()), id_ptr, lay, N, K,
                 static_cast<out_t*>(out.data_ptr()));
          }
        }
      });
    });
    return out;
  }
  if (out.numel() == 0) return out;
  dispatch_on_width(imgs, [&](auto w) {
    using word = decltype(w);
    copy(static_cast<const word*>(imgs.const_data_ptr()), id_ptr, lay, N, K, static_cast<word*>(out.data_ptr()));
  });
  return out;
}

// The sample [N, C, (T,) H, W] (image_size [H, W] or [T, H, W]) holding the patch vectors [N, K, P] at patches
// ids_keep (or all L in order), zero elsewhere. The image is allocated uninitialised: with ids_keep it is zeroed
// first unless fills(lay, src, dst) says the backend's copy writes every pixel itself (a backend without such a
// copy passes no fills). fills is called with the word-typed pointers, as copy.
struct CopyLeavesRest {
  template <typename Src, typename Dst>
  bool operator()(const PatchLayout&, Src, Dst) const { return false; }
};

template <typename Copy, typename Fills = CopyLeavesRest>
at::Tensor scatter_patches(const at::Tensor& patches_in, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                           at::IntArrayRef image_size, Copy copy, Fills fills = {}) {
  check_patch_size(patch_size);
  TORCH_CHECK(image_size.size() == 2 || image_size.size() == 3,
              "mae_kernels: image_size must be [H, W] or [T, H, W], got ", image_size);
  const at::Tensor patches = patches_in.contiguous();
  const int64_t N = patches.size(0), K = patches.size(1);
  const int64_t C = patches.size(2) / (patch_size[0] * patch_size[1] * patch_size[2]);
  std::vector<int64_t> shape{N, C};
  shape.insert(shape.end(), image_size.begin(), image_size.end());
  auto img = at::empty(shape, patches.options());
  if (patches.numel() == 0) return ids_keep ? img.zero_() : img;
  const at::Tensor ids = ids_keep ? ids_keep->contiguous() : at::Tensor();
  const PatchLayout lay = layout_of(img, patch_size);
  dispatch_on_width(patches, [&](auto w) {
    using word = decltype(w);
    const word* src = static_cast<const word*>(patches.const_data_ptr());
    word* dst = static_cast<word*>(img.data_ptr());
    if (ids_keep && !fills(lay, src, dst)) img.zero_();  // the removed patches stay zero
    copy(src, ids_keep ? ids.const_data_ptr<int64_t>() : nullptr, lay, N, K, dst);
  });
  return img;
}

// The four registered ops of a backend whose gather(imgs, ids_keep*, patch_size, dtype) and scatter(patches, ids_keep*,
// patch_size, image_size) check the inputs, guard the device and call gather_patches / scatter_patches above.
template <at::Tensor (*gather)(const at::Tensor&, const at::Tensor*, at::IntArrayRef, std::optional<at::ScalarType>),
          at::Tensor (*scatter)(const at::Tensor&, const at::Tensor*, at::IntArrayRef, at::IntArrayRef)>
struct PatchifyOps {
  static at::Tensor patchify(const at::Tensor& imgs, at::IntArrayRef p) {
    return gather(imgs, nullptr, p, std::nullopt);
  }
  static at::Tensor unpatchify(const at::Tensor& x, at::IntArrayRef p, at::IntArrayRef image_size) {
    return scatter(x, nullptr, p, image_size);
  }
  static at::Tensor masked_patchify(const at::Tensor& imgs, const at::Tensor& ids_keep, at::IntArrayRef p,
                                    std::optional<at::ScalarType> dtype) {
    return gather(imgs, &ids_keep, p, dtype);
  }
  static at::Tensor masked_patchify_backward(const at::Tensor& grad, const at::Tensor& ids_keep, at::IntArrayRef p,
                                             at::IntArrayRef image_size) {
    return scatter(grad, &ids_keep, p, image_size);
  }
};

}  // namespace mae_kernels
