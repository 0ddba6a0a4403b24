// CPU masked MSE loss: rows (pred rows = patches) in parallel; each row reads its target patch straight from
// imgs by strides, skips everything when its mask weight is 0, and computes in fp32 with a two-pass variance.
// The maths (shared with the Triton and CUDA kernels) is in mae_kernels/triton/masked_mse_loss.py's docstring.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "masked_mse_loss_geometry.h"

namespace mae_kernels {
namespace {

// sum of f(0..n-1) in kLanes interleaved fp32 accumulators, combined pairwise: independent chains the compiler
// pipelines and vectorizes (one serial chain is latency-bound), and a smaller rounding error. Fixed order.
template <typename F>
inline float lane_sum(int64_t n, F f) {
  constexpr int kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += f(i + k);
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += f(i);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

// pred: [N, R, P] contiguous; imgs: [N, C, H, W] strided; mask: [N, L] float32; ids: [N, R] int64 or null.
// Outputs (each may be null): partial [N * R] float32, grad_pred [N, R, P], grad_imgs [N, C, H, W] contiguous
// and zero-filled. scale: 2 * grad_loss / (P * mask.sum()) or 0.
template <typename pred_t, typename img_t>
void masked_mse_rows(const MseLossGeometry& g, const pred_t* pred, const img_t* imgs, const float* mask,
                     const int64_t* ids, float scale, float* partial, pred_t* grad_pred, img_t* grad_imgs) {
  const int64_t P = g.P, C = g.C, p = g.p;
  at::parallel_for(0, g.N * g.R, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> t(P);      // the (normalised) target, then the gradient for imgs
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.R;
      const int64_t l = ids != nullptr ? ids[row] : row % g.R;
      const bool valid = l >= 0 && l < g.L;  // validated in Python; never read out of bounds even if not
      const float w = valid ? mask[n * g.L + l] : 0.0f;
      const pred_t* y = pred + row * P;
      if (w == 0.0f) {  // kept patch: nothing to read, zero gradient
        if (partial != nullptr) partial[row] = 0.0f;
        if (grad_pred != nullptr) std::fill(grad_pred + row * P, grad_pred + (row + 1) * P, pred_t(0));
        continue;
      }
      const int64_t y0 = (l / g.w_patches) * p, x0 = (l % g.w_patches) * p;
      // element i = (pr * p + pc) * C + c; nested loops, no per-element divisions in this hot gather
      for (int64_t pr = 0, i = 0; pr < p; ++pr) {
        for (int64_t pc = 0; pc < p; ++pc) {
          const img_t* pixel = imgs + n * g.s_n + (y0 + pr) * g.s_h + (x0 + pc) * g.s_w;
          for (int64_t c = 0; c < C; ++c, ++i) t[i] = static_cast<float>(pixel[c * g.s_c]);
        }
      }
      float std_ = 1.0f;
      if (g.norm) {
        const float shift = t[0];  // sums of shifted values: exact for large offsets
        const float mean = shift + lane_sum(P, [&](int64_t i) { return t[i] - shift; }) / static_cast<float>(P);
        const float sq = lane_sum(P, [&](int64_t i) {
          t[i] -= mean;
          return t[i] * t[i];
        });
        std_ = std::sqrt(sq / static_cast<float>(P - 1) + g.eps);
        for (int64_t i = 0; i < P; ++i) t[i] /= std_;
      }
      const float gscale = w * scale;
      float loss = 0.0f, sum_d = 0.0f, sum_dt = 0.0f;
      if (grad_imgs == nullptr) {  // the training case: loss and pred gradient only
        pred_t* gp = grad_pred != nullptr ? grad_pred + row * P : nullptr;
        loss = lane_sum(P, [&](int64_t i) {
          const float diff = static_cast<float>(y[i]) - t[i];
          if (gp != nullptr) gp[i] = static_cast<pred_t>(diff * gscale);
          return diff * diff;
        });
      } else {
        for (int64_t i = 0; i < P; ++i) {
          const float diff = static_cast<float>(y[i]) - t[i];
          loss += diff * diff;
          const float gr = diff * gscale;
          if (grad_pred != nullptr) grad_pred[row * P + i] = static_cast<pred_t>(gr);
          sum_d -= gr;
          sum_dt -= gr * t[i];
          if (!g.norm) {
            const int64_t c = i % C, pc = (i / C) % p, pr = i / (p * C);
            grad_imgs[((n * C + c) * g.H + y0 + pr) * g.W + x0 + pc] = static_cast<img_t>(-gr);
          }
        }
      }
      if (partial != nullptr) partial[row] = w * loss;
      if (grad_imgs != nullptr && g.norm) {
        // d = -grad_pred; dx = (d - mean(d) - t * sum(d t) / (P - 1)) / std
        const float mean_d = sum_d / static_cast<float>(P);
        const float dt = sum_dt / static_cast<float>(P - 1);
        for (int64_t i = 0; i < P; ++i) {
          const float d = -(static_cast<float>(y[i]) - t[i]) * gscale;
          const int64_t c = i % C, pc = (i / C) % p, pr = i / (p * C);
          grad_imgs[((n * C + c) * g.H + y0 + pr) * g.W + x0 + pc] =
              static_cast<img_t>((d - mean_d - t[i] * dt) / std_);
        }
      }
    }
  });
}

// Sum of the per-row partials in an order fixed by their count alone: blocks of kBlock rows summed in parallel,
// then the block sums in index order. at::sum's order depends on the vector width (AVX2, AVX-512) and on the
// thread count, so its last bits would differ between CPUs and torch.set_num_threads settings.
float fixed_order_sum(const at::Tensor& partial) {
  constexpr int64_t kBlock = 1024;
  const float* x = partial.const_data_ptr<float>();
  const int64_t n = partial.numel(), blocks = (n + kBlock - 1) / kBlock;
  std::vector<float> block_sums(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t start = b * kBlock;
      block_sums[b] = lane_sum(std::min(kBlock, n - start), [&](int64_t i) { return x[start + i]; });
    }
  });
  return lane_sum(blocks, [&](int64_t b) { return block_sums[b]; });
}

// 2 * grad_loss / (P * mask.sum()), 0 when the mask has no removed patch.
float gradient_scale(const at::Tensor& mask, int64_t P, float grad_loss) {
  const double total = mask.sum(at::kDouble).item<double>();
  return total != 0.0 ? static_cast<float>(2.0 * grad_loss / (static_cast<double>(P) * total)) : 0.0f;
}

void run(const at::Tensor& pred, const at::Tensor& imgs, const at::Tensor& mask, const at::Tensor* ids,
         int64_t patch_size, bool norm, double eps, float scale, at::Tensor* partial, at::Tensor* grad_pred,
         at::Tensor* grad_imgs) {
  const MseLossGeometry g = mse_loss_geometry(pred, imgs, mask, ids, patch_size, norm, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_mse_loss_cpu", [&] {
    using pred_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "masked_mse_loss_cpu", [&] {
      masked_mse_rows<pred_t, scalar_t>(
          g, pred.const_data_ptr<pred_t>(), imgs.const_data_ptr<scalar_t>(), mask.const_data_ptr<float>(),
          ids ? ids->const_data_ptr<int64_t>() : nullptr, scale, partial ? partial->data_ptr<float>() : nullptr,
          grad_pred ? grad_pred->data_ptr<pred_t>() : nullptr,
          grad_imgs ? grad_imgs->data_ptr<scalar_t>() : nullptr);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_cpu(const at::Tensor& pred_in, const at::Tensor& imgs,
                                                       const at::Tensor& mask_in,
                                                       const std::optional<at::Tensor>& ids_in, int64_t patch_size,
                                                       bool norm_pix_loss, double eps, bool with_grad) {
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor mask = mask_in.contiguous();
  const std::optional<at::Tensor> ids = ids_in ? std::optional<at::Tensor>(ids_in->contiguous()) : std::nullopt;
  const int64_t P = pred.size(2);
  const float scale = gradient_scale(mask, P, 1.0f);
  at::Tensor partial = at::empty({pred.size(0) * pred.size(1)}, pred.options().dtype(at::kFloat));
  at::Tensor grad_pred = with_grad ? at::empty_like(pred) : pred.new_empty({0});
  run(pred, imgs, mask, ids ? &*ids : nullptr, patch_size, norm_pix_loss, eps, scale, &partial,
      with_grad ? &grad_pred : nullptr, nullptr);
  at::Tensor loss = at::scalar_tensor(fixed_order_sum(partial), partial.options()) * (scale / 2.0f);
  return {loss, grad_pred};
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& pred_in, const at::Tensor& imgs, const at::Tensor& mask_in,
    const std::optional<at::Tensor>& ids_in, int64_t patch_size, bool norm_pix_loss, double eps, bool need_pred,
    bool need_imgs) {
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor mask = mask_in.contiguous();
  const std::optional<at::Tensor> ids = ids_in ? std::optional<at::Tensor>(ids_in->contiguous()) : std::nullopt;
  const float scale = gradient_scale(mask, pred.size(2), grad_loss.item<float>());
  at::Tensor grad_pred = need_pred ? at::empty_like(pred) : pred.new_empty({0});
  at::Tensor grad_imgs = need_imgs ? at::zeros(imgs.sizes(), imgs.options()) : imgs.new_empty({0});
  if (need_pred || need_imgs) {
    run(pred, imgs, mask, ids ? &*ids : nullptr, patch_size, norm_pix_loss, eps, scale, nullptr,
        need_pred ? &grad_pred : nullptr, need_imgs ? &grad_imgs : nullptr);
  }
  return {grad_pred, grad_imgs};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CPU, m) {
  m.impl("masked_mse_loss", &masked_mse_loss_cpu);
  m.impl("masked_mse_loss_backward", &masked_mse_loss_backward_cpu);
}

}  // namespace mae_kernels
