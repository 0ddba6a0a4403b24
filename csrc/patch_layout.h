// Where the pixels of a patch vector live. Shared by the CPU and CUDA kernels (torch-free, host/device).
// A patch vector has P = p * p * C entries in MAE's (p_row, p_col, c) order, channel fastest; patch l of
// image n sits at grid cell (l / grid_w, l % grid_w). Images are addressed by their int64 element strides.
#pragma once
#include <cstdint>

#include "fast_divmod.h"

namespace mae_kernels {

struct PatchLayout {
  int64_t C, p, grid_w;             // channels, patch size, patches per image row
  int64_t s_n, s_c, s_h, s_w;       // image element strides
  FastDivmod div_C, div_p, div_grid_w;  // the divisions by C, p and grid_w (no division instruction)

  PatchLayout(int64_t C_, int64_t p_, int64_t grid_w_, int64_t s_n_, int64_t s_c_, int64_t s_h_, int64_t s_w_)
      : C(C_), p(p_), grid_w(grid_w_), s_n(s_n_), s_c(s_c_), s_h(s_h_), s_w(s_w_), div_C(C_), div_p(p_),
        div_grid_w(grid_w_) {}

  // Element offset of the top-left pixel, channel 0, of patch l of image n.
  MAE_HOST_DEVICE int64_t corner(int64_t n, int64_t l) const {
    int64_t grid_x;
    const int64_t grid_y = div_grid_w.divmod(l, &grid_x);
    return n * s_n + grid_y * p * s_h + grid_x * p * s_w;
  }
  // Offset of entry j (in (p_row, p_col, c) order) of a patch from its corner.
  MAE_HOST_DEVICE int64_t in_patch(int64_t j) const {
    int64_t c, p_col;
    const int64_t p_row = div_p.divmod(div_C.divmod(j, &c), &p_col);
    return c * s_c + p_row * s_h + p_col * s_w;
  }
  // Element offset of entry j of patch l of image n.
  MAE_HOST_DEVICE int64_t offset(int64_t n, int64_t l, int64_t j) const { return corner(n, l) + in_patch(j); }
};

}  // namespace mae_kernels
