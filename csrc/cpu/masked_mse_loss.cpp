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

// pred: [N, R, P] contiguous; imgs: [N, C, T, H, W] strided (T = 1 for images); mask: [N, L] float32 (the
// loss weight of each token); ids: [N, R] int64 or null. Outputs (each may be null): partial [N * R] float32,
// grad_pred [N, R, P], grad_imgs [N, C, T, H, W] contiguous and zero-filled (only for the all-channel or raw
// target of the tubelet's own frames, no pixel_norm). scale: 2 * grad_loss / (P * mask.sum()), 2 / P for
// per-token losses, or 0.
template <typename pred_t, typename img_t>
void masked_mse_rows(const MseLossGeometry& g, const pred_t* pred, const img_t* imgs, const float* mask,
                     const int64_t* ids, float scale, float* partial, pred_t* grad_pred, img_t* grad_imgs) {
  const int64_t P = g.P, C = g.C, ph = g.ph, pw = g.pw, hw = (g.H / ph) * g.w_patches;
  const float* pn = g.pixel_norm;  // [2, C] std and mean, or null
  at::parallel_for(0, g.N * g.R, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> t(P);      // the (normalised) target, then the gradient for imgs
    std::vector<float> tc(g.per_channel ? P : 0);  // per-channel statistics: the target channel-major
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
      const int64_t ti = l / hw, s = l % hw;
      const int64_t y0 = (s / g.w_patches) * ph, x0 = (s % g.w_patches) * pw;
      // element i = ((a * ph + pr) * pw + pc) * C + c; nested loops, no per-element divisions in this hot gather
      for (int64_t a = 0, i = 0; a < g.ut; ++a) {
        const int64_t f = g.frames != nullptr ? g.frames[ti * g.ut + a] : ti * g.u + a;
        for (int64_t pr = 0; pr < ph; ++pr) {
          for (int64_t pc = 0; pc < pw; ++pc) {
            const img_t* pixel = imgs + n * g.s_n + f * g.s_t + (y0 + pr) * g.s_h + (x0 + pc) * g.s_w;
            if (pn == nullptr) {
              for (int64_t c = 0; c < C; ++c, ++i) t[i] = static_cast<float>(pixel[c * g.s_c]);
            } else {  // the model input un-normalised: x * std + mean per channel
              for (int64_t c = 0; c < C; ++c, ++i) t[i] = static_cast<float>(pixel[c * g.s_c]) * pn[c] + pn[C + c];
            }
          }
        }
      }
      float std_ = 1.0f;
      if (g.norm && g.per_channel) {
        // per channel c over its Q = P / C values t[k * C + c]: (v - mean) / (sqrt(unbiased var) + eps), on a
        // channel-major copy (contiguous sums that vectorize; strided ones do not)
        const int64_t Q = P / C;
        for (int64_t k = 0; k < Q; ++k) {
          for (int64_t c = 0; c < C; ++c) tc[c * Q + k] = t[k * C + c];
        }
        for (int64_t c = 0; c < C; ++c) {
          float* v = tc.data() + c * Q;
          const float shift = v[0];  // sums of shifted values: exact for large offsets
          const float mean = shift + lane_sum(Q, [&](int64_t k) { return v[k] - shift; }) / static_cast<float>(Q);
          const float sq = lane_sum(Q, [&](int64_t k) {
            v[k] -= mean;
            return v[k] * v[k];
          });
          const float denom = std::sqrt(sq / static_cast<float>(Q - 1)) + g.eps;
          for (int64_t k = 0; k < Q; ++k) v[k] /= denom;
        }
        for (int64_t k = 0; k < Q; ++k) {
          for (int64_t c = 0; c < C; ++c) t[k * C + c] = tc[c * Q + k];
        }
      } else if (g.norm) {
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
      // imgs gradient element of patch-vector element i (the tubelet's own frames: f = ti * u + a)
      const auto grad_index = [&](int64_t i) {
        const int64_t c = i % C, q = i / C, pc = q % pw, pr = (q / pw) % ph, a = q / (pw * ph);
        return (((n * C + c) * g.T + ti * g.u + a) * g.H + y0 + pr) * g.W + x0 + pc;
      };
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
          if (!g.norm) grad_imgs[grad_index(i)] = static_cast<img_t>(-gr);
        }
      }
      if (partial != nullptr) partial[row] = w * loss;
      if (grad_imgs != nullptr && g.norm) {
        // d = -grad_pred; dx = (d - mean(d) - t * sum(d t) / (P - 1)) / std
        const float mean_d = sum_d / static_cast<float>(P);
        const float dt = sum_dt / static_cast<float>(P - 1);
        for (int64_t i = 0; i < P; ++i) {
          const float d = -(static_cast<float>(y[i]) - t[i]) * gscale;
          grad_imgs[grad_index(i)] = static_cast<img_t>((d - mean_d - t[i] * dt) / std_);
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

// reduction="none": w * l per token, [N, L] fp32 (0 where no row predicts the token or its weight is 0), from
// the row partials w * sum_i d_i^2.
at::Tensor per_token_loss(const at::Tensor& partial, const std::optional<at::Tensor>& ids, const at::Tensor& mask,
                          int64_t P) {
  const int64_t N = mask.size(0), L = mask.size(1);
  const at::Tensor rows = partial.view({N, -1}) / static_cast<double>(P);
  if (!ids) return rows;
  return at::zeros({N, L}, partial.options()).scatter_(1, *ids, rows);
}

// 2 * grad_loss / (P * mask.sum()), 0 when the mask has no removed patch.
float gradient_scale(const at::Tensor& mask, int64_t P, float grad_loss) {
  const double total = mask.sum(at::kDouble).item<double>();
  return total != 0.0 ? static_cast<float>(2.0 * grad_loss / (static_cast<double>(P) * total)) : 0.0f;
}

// The optional inputs, contiguous (pred and ids by rows: the kernels index them as [N, R, P] and [N, R]).
struct Inputs {
  at::Tensor pred, mask;
  std::optional<at::Tensor> ids, frames, pixel_norm;
};

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

Inputs prepare(const at::Tensor& pred, const at::Tensor& mask, const std::optional<at::Tensor>& ids,
               const std::optional<at::Tensor>& frames, const std::optional<at::Tensor>& pixel_norm) {
  return {pred.contiguous(), mask.contiguous(), contiguous(ids), contiguous(frames), contiguous(pixel_norm)};
}

void run(const Inputs& in, const at::Tensor& imgs, const at::Tensor& mask, at::IntArrayRef patch_size, bool norm,
         bool per_channel, double eps, float scale, at::Tensor* partial, at::Tensor* grad_pred,
         at::Tensor* grad_imgs) {
  const at::Tensor& pred = in.pred;
  const MseLossGeometry g =
      mse_loss_geometry(pred, imgs, mask, in.ids ? &*in.ids : nullptr, in.frames ? &*in.frames : nullptr,
                        in.pixel_norm ? &*in.pixel_norm : nullptr, patch_size, norm, per_channel, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_mse_loss_cpu", [&] {
    using pred_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "masked_mse_loss_cpu", [&] {
      masked_mse_rows<pred_t, scalar_t>(
          g, pred.const_data_ptr<pred_t>(), imgs.const_data_ptr<scalar_t>(), mask.const_data_ptr<float>(),
          in.ids ? in.ids->const_data_ptr<int64_t>() : nullptr, scale,
          partial ? partial->data_ptr<float>() : nullptr, grad_pred ? grad_pred->data_ptr<pred_t>() : nullptr,
          grad_imgs ? grad_imgs->data_ptr<scalar_t>() : nullptr);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_cpu(
    const at::Tensor& pred_in, const at::Tensor& imgs, const at::Tensor& mask_in,
    const std::optional<at::Tensor>& ids_in, at::IntArrayRef patch_size, bool norm_pix_loss, double eps,
    bool with_grad, const std::optional<at::Tensor>& frames, const std::optional<at::Tensor>& pixel_norm,
    bool per_channel, bool per_token) {
  const Inputs in = prepare(pred_in, mask_in, ids_in, frames, pixel_norm);
  const int64_t N = in.pred.size(0), R = in.pred.size(1), P = in.pred.size(2);
  // per-token losses: the gradient for grad_loss = ones, 2 * w / P per row
  const float scale = per_token ? static_cast<float>(2.0 / static_cast<double>(P)) : gradient_scale(in.mask, P, 1.0f);
  at::Tensor partial = at::empty({N * R}, in.pred.options().dtype(at::kFloat));
  at::Tensor grad_pred = with_grad ? at::empty_like(in.pred) : in.pred.new_empty({0});
  run(in, imgs, in.mask, patch_size, norm_pix_loss, per_channel, eps, scale, &partial,
      with_grad ? &grad_pred : nullptr, nullptr);
  if (per_token) return {per_token_loss(partial, in.ids, in.mask, P), grad_pred};
  at::Tensor loss = at::scalar_tensor(fixed_order_sum(partial), partial.options()) * (scale / 2.0f);
  return {loss, grad_pred};
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& pred_in, const at::Tensor& imgs, const at::Tensor& mask_in,
    const std::optional<at::Tensor>& ids_in, at::IntArrayRef patch_size, bool norm_pix_loss, double eps,
    bool need_pred, bool need_imgs, const std::optional<at::Tensor>& frames,
    const std::optional<at::Tensor>& pixel_norm, bool per_channel, bool per_token) {
  TORCH_CHECK(!need_imgs || (!frames && !pixel_norm && !per_channel),
              "mae_kernels::masked_mse_loss_backward: no imgs gradient with target_frames, pixel_norm or "
              "per_channel (the target is data there)");
  const Inputs in = prepare(pred_in, mask_in, ids_in, frames, pixel_norm);
  const int64_t P = in.pred.size(2);
  // per-token losses: each token's weight times its upstream gradient, 2 / P
  const at::Tensor mask = per_token ? (in.mask * grad_loss.to(at::kFloat)).contiguous() : in.mask;
  const float scale = per_token ? static_cast<float>(2.0 / static_cast<double>(P))
                                : gradient_scale(in.mask, P, grad_loss.item<float>());
  at::Tensor grad_pred = need_pred ? at::empty_like(in.pred) : in.pred.new_empty({0});
  at::Tensor grad_imgs = need_imgs ? at::zeros(imgs.sizes(), imgs.options()) : imgs.new_empty({0});
  if (need_pred || need_imgs) {
    run(in, imgs, mask, patch_size, norm_pix_loss, per_channel, eps, scale, nullptr,
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
