// The summation order of masked_patch_embed's bias gradient (op masked_patch_embed_bias_grad), shared by the CPU
// and CUDA kernels and mae_kernels/triton/masked_patch_embed_bias_grad.py, so that every backend adds the same
// fp32 numbers in the same order (same bits everywhere, any thread count). Torch-free.
//   grad [N, K, D] rows are cut into chunks of kBiasGradRows rows within a sample: chunk c = n * KB + kb,
//   KB = ceil(K / kBiasGradRows), holds rows k in [kb * kBiasGradRows, min(K, (kb + 1) * kBiasGradRows)) of
//   sample n; partial[c, d] = 0 + row k0 + row k0 + 1 + ... (fp32, in row order).
//   grad_bias[d] = 0 + group 0 + group 1 + ..., group g = 0 + partial[g * kBiasGradGroup] + ... + partial[g *
//   kBiasGradGroup + kBiasGradGroup - 1] (chunks past the end left out).
// The rounding error then grows with about kBiasGradRows + kBiasGradGroup + N * K / (kBiasGradRows *
// kBiasGradGroup) terms instead of N * K.
#pragma once
#include <cstdint>

namespace mae_kernels {

constexpr int64_t kBiasGradRows = 32;
constexpr int64_t kBiasGradGroup = 32;

}  // namespace mae_kernels
