// CPU patchify / unpatchify / masked_patchify and its backward (a scatter into a zero image): the shared host
// side (csrc/masked_patchify_host.h) allocates and dispatches; here is the copy loop. Rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#include "masked_patchify_host.h"
#include "patch_layout.h"

namespace mae_kernels {
namespace {

// Copies each patch vector between the image or video (strides in lay) and its row of [N, K, P] (contiguous); ids:
// [N, K] or nullptr (patch k). kToImage false gathers (src: image, dst: rows); true scatters (src: rows,
// dst: image), and as patches are disjoint, rows never collide. in_t == out_t: raw words, copied; else a gather
// into another dtype (float, at::Half, at::BFloat16), each element rounded once (convert_element).
template <bool kToImage, typename in_t, typename out_t>
void copy_patches(const in_t* src, const int64_t* ids, PatchLayout lay, int64_t N, int64_t K, out_t* dst) {
  const int64_t P = lay.P();
  const FastDivmod div_K(K);
  at::parallel_for(0, N * K, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t k;
      const int64_t n = div_K.divmod(i, &k);
      const int64_t corner = lay.corner(n, ids ? ids[i] : k);  // the tubelet's first pixel, channel 0
      const in_t* from = src + (kToImage ? i * P : corner);
      out_t* to = dst + (kToImage ? corner : i * P);
      // Entry ((a * ph + r) * pw + q) * C + c of the patch vector (channel fastest) is pixel (c, a, r, q). The
      // loops walk each pixel row of a channel (pw elements, stride s_w: contiguous in [N, C, (T,) H, W]) rather
      // than the vector's order, whose consecutive entries are a channel stride apart in the image.
      for (int64_t a = 0; a < lay.u; ++a)
        for (int64_t r = 0; r < lay.ph; ++r)
          for (int64_t c = 0; c < lay.C; ++c) {
            const int64_t row = a * lay.s_t + r * lay.s_h + c * lay.s_c;
            const int64_t first = (a * lay.ph + r) * lay.pw * lay.C + c;
            for (int64_t q = 0; q < lay.pw; ++q) {
              const int64_t pixel = row + q * lay.s_w, j = first + q * lay.C;
              to[kToImage ? pixel : j] = convert_element<out_t>(from[kToImage ? j : pixel]);
            }
          }
    }
  });
}

at::Tensor gather_cpu(const at::Tensor& imgs, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                      std::optional<at::ScalarType> dtype) {
  return gather_patches(imgs, ids_keep, patch_size, [](auto... args) { copy_patches<false>(args...); }, dtype);
}

at::Tensor scatter_cpu(const at::Tensor& patches, const at::Tensor* ids_keep, at::IntArrayRef patch_size,
                       at::IntArrayRef image_size) {
  return scatter_patches(patches, ids_keep, patch_size, image_size,
                         [](auto... args) { copy_patches<true>(args...); });
}

using Ops = PatchifyOps<gather_cpu, scatter_cpu>;

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("patchify", &Ops::patchify);
  m.impl("unpatchify", &Ops::unpatchify);
  m.impl("masked_patchify", &Ops::masked_patchify);
  m.impl("masked_patchify_backward", &Ops::masked_patchify_backward);
}

}  // namespace mae_kernels
