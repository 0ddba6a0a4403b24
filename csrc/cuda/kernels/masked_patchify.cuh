// Torch-free CUDA kernels of the patchify family, copying raw words of the element's width (bit-exact for every
// dtype): copy_patches_vec_kernel moves 16 bytes per access where the layout allows it; copy_patches_kernel is the
// generic one (one block per patch-vector row, grid-stride, threads over its P entries). ids == nullptr means
// patch k of each image (K = L). A gather may also round each element to another dtype (masked_patchify's dtype:
// masked_patch_embed's autocast gather): copy_patches_kernel with typed in/out pointers, or the 16-byte
// copy_patches_cast_vec_kernel for fp32 images to fp16 / bf16 patch vectors.
#pragma once
#include <cstdint>

#include "patch_layout.h"

namespace mae_kernels {

// Entries whose in-patch offsets a block keeps in shared memory (16 KiB): P = 768 (p 16, C 3), 588 (p 14) and
// 1536 (tubelet 2x16x16, C 3).
constexpr int64_t kPatchOffsetTable = 2048;

// Copies between the image or video (strides in lay) and the patch vectors [N, K, P] (contiguous); ids: [N, K] int64 or
// nullptr; div_K divides by K. kToImage false gathers (src: image, dst: patch vectors); true scatters (src: patch
// vectors, dst: image; only the listed patches are written, nothing else). out_t: word itself (a raw copy), or
// for a gather into another dtype the typed element (convert_element rounds each one once).
// The in-patch offset of each entry is computed once per block (a table in shared memory when P fits, else per
// element), the patch corner once per row and thread: an element costs a shared load, an add and the copy.
template <bool kToImage, typename word, int kThreads, typename out_t = word>
__global__ void __launch_bounds__(kThreads) copy_patches_kernel(const word* __restrict__ src,
                                                                const int64_t* __restrict__ ids, PatchLayout lay,
                                                                FastDivmod div_K, int64_t rows, int64_t P,
                                                                out_t* __restrict__ dst) {
  __shared__ int64_t table[kPatchOffsetTable];
  const bool tabled = P <= kPatchOffsetTable;
  if (tabled) {
    for (int64_t j = threadIdx.x; j < P; j += kThreads) table[j] = lay.in_patch(j);
  }
  __syncthreads();
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {  // row (n, k)
    int64_t k;
    const int64_t n = div_K.divmod(i, &k);
    const int64_t corner = lay.corner(n, ids ? ids[i] : k);
    for (int64_t j = threadIdx.x; j < P; j += kThreads) {
      const int64_t pixel = corner + (tabled ? table[j] : lay.in_patch(j));
      const int64_t e = i * P + j;
      dst[kToImage ? pixel : e] = convert_element<out_t>(src[kToImage ? e : pixel]);
    }
  }
}

// One 16-byte store. nvcc splits the plain uint4 store into the image into four 4-byte ones (the stride-apart
// destinations of the scatter); st.global.wb.v4 keeps it whole.
template <typename word>
__device__ __forceinline__ void store16(word* p, const uint4& v) {
#if defined(__CUDA_ARCH__)
  __stwb(reinterpret_cast<uint4*>(p), v);
#else
  *reinterpret_cast<uint4*>(p) = v;
#endif
}

// Work item t of the 16-byte patch copies (copy_patches_vec_kernel, copy_patches_cast_vec_kernel): kV columns of
// one (frame, patch row) in all kC channels; t = (row i, group g), g = (frame * ph + p_row) * runs + run. Gives the
// row i, the image offset of the run's first pixel in channel 0 (pixel) and the offset of its kV * kC entries in
// the patch vectors (e).
struct VecItem {
  int64_t i, pixel, e;
};

template <int kV, int kC>
__device__ __forceinline__ VecItem vec_item(int64_t t, const int64_t* ids, const PatchLayout& lay, FastDivmod div_K,
                                            FastDivmod div_groups, FastDivmod div_runs, int64_t P) {
  int64_t g, k, run, p_row;
  const int64_t i = div_groups.divmod(t, &g);
  const int64_t n = div_K.divmod(i, &k);
  const int64_t frame = lay.div_ph.divmod(div_runs.divmod(g, &run), &p_row);
  return {i, lay.corner(n, ids ? ids[i] : k) + frame * lay.s_t + p_row * lay.s_h + run * kV, i * P + g * (kV * kC)};
}

// kC 16-byte vectors, seen as their words (kV = 16 / sizeof(word) each): the 16-byte copy kernels' registers.
template <typename word, int kC>
union Vectors {
  uint4 v[kC];
  word w[16 / sizeof(word) * kC];
};

// The scatter direction's register transpose: kC 16-byte loads of kV * kC channel-fastest patch-vector entries at
// `patch` (kV = 16 / sizeof(word) columns), rearranged into kC channel runs of kV columns (out.v[c]).
template <typename word, int kC>
__device__ __forceinline__ void load_channel_runs(const word* patch, Vectors<word, kC>& out) {
  constexpr int kV = 16 / static_cast<int>(sizeof(word));
  Vectors<word, kC> in;
#pragma unroll
  for (int c = 0; c < kC; ++c) in.v[c] = reinterpret_cast<const uint4*>(patch)[c];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
#pragma unroll
    for (int v = 0; v < kV; ++v) out.w[c * kV + v] = in.w[v * kC + c];
  }
}

// 16-byte variant for the common case: the image's pixel rows contiguous (s_w == 1), and pw, every other stride and
// both base addresses multiples of one 16-byte vector of kV = 16 / sizeof(word) elements (the host checks,
// csrc/cuda/masked_patchify.cu, and takes copy_patches_kernel otherwise). One work item is kV columns of one
// (frame, patch row) in all kC channels: kC 16-byte loads of channel runs in the image, transposed in registers
// to channel-fastest order, kC 16-byte stores of the patch vector's contiguous kV * kC entries (or the reverse to
// scatter). Items are numbered over the whole batch: item t = (row i, group g), g = (frame * ph + p_row) * runs +
// run, runs = pw / kV; div_groups divides by the groups per row (P / (kV * kC)), div_runs by runs.
template <bool kToImage, typename word, int kC, int kThreads>
__global__ void __launch_bounds__(kThreads) copy_patches_vec_kernel(const word* __restrict__ src,
                                                                    const int64_t* __restrict__ ids,
                                                                    PatchLayout lay, FastDivmod div_K,
                                                                    FastDivmod div_groups, FastDivmod div_runs,
                                                                    int64_t items, int64_t P,
                                                                    word* __restrict__ dst) {
  constexpr int kV = 16 / static_cast<int>(sizeof(word));
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < items;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const VecItem it = vec_item<kV, kC>(t, ids, lay, div_K, div_groups, div_runs, P);
    const int64_t pixel = it.pixel, e = it.e;
    Vectors<word, kC> in, out;
    if (!kToImage) {
#pragma unroll
      for (int c = 0; c < kC; ++c) in.v[c] = *reinterpret_cast<const uint4*>(src + pixel + c * lay.s_c);
#pragma unroll
      for (int c = 0; c < kC; ++c) {
#pragma unroll
        for (int v = 0; v < kV; ++v) out.w[v * kC + c] = in.w[c * kV + v];
      }
#pragma unroll
      for (int c = 0; c < kC; ++c) reinterpret_cast<uint4*>(dst + e)[c] = out.v[c];
    } else {
      load_channel_runs<word, kC>(src + e, out);
#pragma unroll
      for (int c = 0; c < kC; ++c) store16(dst + pixel + c * lay.s_c, out.v[c]);
    }
  }
}

// masked_patchify_backward in one pass (no zero-fill launch before the scatter): one block per band of the sample,
// band b = (n, ti, hi) = grid_w patches side by side (u frames x ph rows x the image's width, kC channels), writes
// every pixel of its band: the listed patches' values, zeros elsewhere. The block first maps each of its grid_w
// patches to the row k of ids[n, :] that holds it (shared, -1 if none), then works as copy_patches_vec_kernel's
// scatter: an item is kV columns of one (frame, p_row) of the band in all kC channels. The image is the fresh
// contiguous output (the host checks the 16-byte conditions as for copy_patches_vec_kernel). bands = N * t * h,
// items per band = u * ph * runs_w; div_bands divides by the bands per sample (t * h), div_runs_w by the runs per
// image row (runs_w = grid_w * pw / kV), div_runs by the runs per patch (pw / kV).
template <typename word, int kC, int kThreads>
__global__ void __launch_bounds__(kThreads) scatter_bands_vec_kernel(const word* __restrict__ src,
                                                                     const int64_t* __restrict__ ids,
                                                                     PatchLayout lay, int64_t K, int64_t bands,
                                                                     int64_t items, FastDivmod div_bands,
                                                                     FastDivmod div_runs_w, FastDivmod div_runs,
                                                                     word* __restrict__ dst) {
  constexpr int kV = 16 / static_cast<int>(sizeof(word));
  extern __shared__ int32_t row_of[];  // [grid_w]: row k of ids[n, :] holding the band's patch, or -1
  const int64_t P = lay.P();
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t b = blockIdx.x; b < bands; b += gridDim.x) {
    int64_t band;
    const int64_t n = div_bands.divmod(b, &band);
    const int64_t first = band * lay.grid_w;  // token of the band's patch 0
    __syncthreads();  // the previous band's readers are done with row_of
    for (int64_t j = threadIdx.x; j < lay.grid_w; j += kThreads) row_of[j] = -1;
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      const int64_t d = ids[n * K + k] - first;
      if (d >= 0 && d < lay.grid_w) row_of[d] = static_cast<int32_t>(k);
    }
    __syncthreads();
    const int64_t corner = lay.corner(n, first);
#pragma unroll 1
    for (int64_t t = threadIdx.x; t < items; t += kThreads) {
      int64_t x_run, run, p_row;
      const int64_t frame = lay.div_ph.divmod(div_runs_w.divmod(t, &x_run), &p_row);
      const int64_t patch = div_runs.divmod(x_run, &run);
      const int64_t pixel = corner + frame * lay.s_t + p_row * lay.s_h + x_run * kV;
      const int64_t k = row_of[patch];
      Vectors<word, kC> out;
      if (k >= 0) {
        load_channel_runs<word, kC>(src + (n * K + k) * P + ((frame * lay.ph + p_row) * lay.pw + run * kV) * kC, out);
      } else {
#pragma unroll
        for (int c = 0; c < kC; ++c) out.v[c] = uint4{0, 0, 0, 0};
      }
#pragma unroll
      for (int c = 0; c < kC; ++c) store16(dst + pixel + c * lay.s_c, out.v[c]);
    }
  }
}

// The 16-byte gather of fp32 images into 16-bit patch vectors (fp16 / bf16: Round::apply(float) gives the rounded
// element's bits). As copy_patches_vec_kernel's gather with kV = 8 columns per item: per channel two 16-byte loads
// of 8 fp32 pixels, rounded once each, transposed to channel-fastest order, kC 16-byte stores. The host
// (csrc/cuda/masked_patchify.cu) checks s_w == 1, pw % 8 == 0, the other strides multiples of 4 elements and both
// base addresses 16-byte aligned; div_groups divides by P / (8 * kC), div_runs by pw / 8.
template <int kC, typename Round, int kThreads>
__global__ void __launch_bounds__(kThreads) copy_patches_cast_vec_kernel(const float* __restrict__ src,
                                                                         const int64_t* __restrict__ ids,
                                                                         PatchLayout lay, FastDivmod div_K,
                                                                         FastDivmod div_groups, FastDivmod div_runs,
                                                                         int64_t items, int64_t P,
                                                                         uint16_t* __restrict__ dst) {
  constexpr int kV = 8;
  union In {  // kC channel runs of kV pixels
    uint4 v[2 * kC];
    float f[kV * kC];
  };
  union Out {  // kV * kC entries of the patch vector
    uint4 v[kC];
    uint16_t w[kV * kC];
  };
#pragma unroll 1  // unrolling a grid-stride loop needs its trip count: a 64-bit division
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < items;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const VecItem it = vec_item<kV, kC>(t, ids, lay, div_K, div_groups, div_runs, P);
    const int64_t pixel = it.pixel, e = it.e;
    In in;
    Out out;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
#pragma unroll
      for (int h = 0; h < 2; ++h) in.v[2 * c + h] = *reinterpret_cast<const uint4*>(src + pixel + c * lay.s_c + 4 * h);
    }
#pragma unroll
    for (int c = 0; c < kC; ++c) {
#pragma unroll
      for (int v = 0; v < kV; ++v) out.w[v * kC + c] = Round::apply(in.f[c * kV + v]);
    }
#pragma unroll
    for (int c = 0; c < kC; ++c) reinterpret_cast<uint4*>(dst + e)[c] = out.v[c];
  }
}

}  // namespace mae_kernels
