// Where the pixels of a patch vector live. Shared by the CPU and CUDA kernels (torch-free, host/device).
// A patch is a tubelet of u frames x ph rows x pw columns (images: u = 1, time stride 0). Its vector has
// P = u * ph * pw * C entries in (frame, p_row, p_col, c) order, channel fastest (MAE_SPEC_VIDEO.md); patch l of
// sample n sits at grid cell (ti, hi, wi) with l = (ti * grid_h + hi) * grid_w + wi (time-major, then row-major).
// Samples are addressed by their int64 element strides; every division is a FastDivmod (no division instruction).
#pragma once
#include <cstdint>
#include <type_traits>

#include "fast_divmod.h"

namespace mae_kernels {

// One element of a gather into another dtype (masked_patchify's dtype): its value (exact in fp32) rounded once to
// out_t, to nearest even as ATen's casts (out_t, in_t: float or the backend's fp16 / bf16 types); the same type
// (raw words) is copied as is.
template <typename out_t, typename in_t>
MAE_HOST_DEVICE out_t convert_element(in_t x) {
  if constexpr (std::is_same_v<in_t, out_t>) {
    return x;
  } else {
    return static_cast<out_t>(static_cast<float>(x));
  }
}

struct PatchLayout {
  int64_t C, u, ph, pw;                  // channels, tubelet frames, patch height and width
  int64_t grid_w, grid_hw;               // patches per row, per frame of the grid (h * w)
  int64_t s_n, s_c, s_t, s_h, s_w;       // element strides (s_t = 0 for images)
  FastDivmod div_C, div_ph, div_pw, div_grid_w, div_grid_hw;

  PatchLayout(int64_t C_, int64_t u_, int64_t ph_, int64_t pw_, int64_t grid_h, int64_t grid_w_, int64_t s_n_,
              int64_t s_c_, int64_t s_t_, int64_t s_h_, int64_t s_w_)
      : C(C_), u(u_), ph(ph_), pw(pw_), grid_w(grid_w_), grid_hw(grid_h * grid_w_), s_n(s_n_), s_c(s_c_),
        s_t(s_t_), s_h(s_h_), s_w(s_w_), div_C(C_), div_ph(ph_), div_pw(pw_), div_grid_w(grid_w_),
        div_grid_hw(grid_h * grid_w_) {}

  // Entries of a patch vector.
  MAE_HOST_DEVICE int64_t P() const { return u * ph * pw * C; }
  // Element offset of the first pixel (frame 0 of the tubelet, top-left, channel 0) of patch l of sample n.
  MAE_HOST_DEVICE int64_t corner(int64_t n, int64_t l) const {
    int64_t rest, grid_x;
    const int64_t grid_t = div_grid_hw.divmod(l, &rest);
    const int64_t grid_y = div_grid_w.divmod(rest, &grid_x);
    return n * s_n + grid_t * u * s_t + grid_y * ph * s_h + grid_x * pw * s_w;
  }
  // Offset of entry j (in (frame, p_row, p_col, c) order) of a patch from its corner.
  MAE_HOST_DEVICE int64_t in_patch(int64_t j) const {
    int64_t c, p_col, p_row;
    const int64_t frame = div_ph.divmod(div_pw.divmod(div_C.divmod(j, &c), &p_col), &p_row);
    return c * s_c + frame * s_t + p_row * s_h + p_col * s_w;
  }
  // Element offset of entry j of patch l of sample n.
  MAE_HOST_DEVICE int64_t offset(int64_t n, int64_t l, int64_t j) const { return corner(n, l) + in_patch(j); }
};

}  // namespace mae_kernels
