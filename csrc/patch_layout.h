// Where the pixels of a patch vector live. Shared by the CPU and CUDA kernels (torch-free, host/device).
// A patch vector has P = p * p * C entries in MAE's (p_row, p_col, c) order, channel fastest; patch l of
// image n sits at grid cell (l / grid_w, l % grid_w). Images are addressed by their int64 element strides.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MAE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MAE_HOST_DEVICE inline
#endif

namespace mae_kernels {

struct PatchLayout {
  int64_t C, p, grid_w;             // channels, patch size, patches per image row
  int64_t s_n, s_c, s_h, s_w;       // image element strides

  // Element offset of entry j (in (p_row, p_col, c) order) of patch l of image n.
  MAE_HOST_DEVICE int64_t offset(int64_t n, int64_t l, int64_t j) const {
    const int64_t c = j % C;
    const int64_t q = j / C;  // p_row * p + p_col
    const int64_t y = (l / grid_w) * p + q / p;
    const int64_t x = (l % grid_w) * p + q % p;
    return n * s_n + c * s_c + y * s_h + x * s_w;
  }
};

}  // namespace mae_kernels
