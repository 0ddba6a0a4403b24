// CUDA masked MSE loss: checks, device guard, current stream, dtype dispatch and launch of
// kernels/masked_mse_loss.cuh (one block per prediction row, framed by two one-block kernels). The loss is
// sum(per-row partials) / (P * mask.sum()), or the partials / P per token: deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/kernels/masked_mse_loss.cuh"

namespace mae_kernels {
namespace {

constexpr int kThreads = 256;       // per prediction row
constexpr int kTotalThreads = 512;   // the one-block scale and total kernels

void check_inputs(const at::Tensor& pred, const at::Tensor& imgs, const at::Tensor& mask,
                  const std::optional<at::Tensor>& ids, const std::optional<at::Tensor>& frames,
                  const std::optional<at::Tensor>& pixel_norm) {
  TORCH_CHECK(pred.is_cuda() && imgs.is_cuda() && mask.is_cuda() && (!ids || ids->is_cuda()) &&
                  (!frames || frames->is_cuda()) && (!pixel_norm || pixel_norm->is_cuda()),
              "mae_kernels::masked_mse_loss (CUDA): every tensor must be on the GPU");
  TORCH_CHECK(pred.dim() == 3 && (imgs.dim() == 4 || imgs.dim() == 5) && mask.dim() == 2,
              "mae_kernels::masked_mse_loss: bad ranks");
  TORCH_CHECK(mask.scalar_type() == at::kFloat, "mae_kernels::masked_mse_loss: mask must be float32");
  TORCH_CHECK(!ids || ids->scalar_type() == at::kLong, "mae_kernels::masked_mse_loss: ids_rows must be int64");
  TORCH_CHECK(!frames || frames->scalar_type() == at::kLong,
              "mae_kernels::masked_mse_loss: target_frames must be int64");
  TORCH_CHECK(!pixel_norm || pixel_norm->scalar_type() == at::kFloat,
              "mae_kernels::masked_mse_loss: pixel_norm must be float32");
}

// The kernels read pred and ids rows by their strides (the model's pred is a view, x[:, 1:, :]); only a strided
// last dimension is copied.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.size(-1) > 1 && t.stride(-1) != 1 ? t.contiguous() : t; }

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

struct Inputs {
  at::Tensor pred, mask;
  std::optional<at::Tensor> ids, frames, pixel_norm;
};

Inputs prepare(const at::Tensor& pred, const at::Tensor& imgs, const at::Tensor& mask,
               const std::optional<at::Tensor>& ids, const std::optional<at::Tensor>& frames,
               const std::optional<at::Tensor>& pixel_norm) {
  check_inputs(pred, imgs, mask, ids, frames, pixel_norm);
  return {rows_contiguous(pred), mask.contiguous(),
          ids ? std::optional<at::Tensor>(rows_contiguous(*ids)) : std::nullopt, contiguous(frames),
          contiguous(pixel_norm)};
}

// [1] float32 on the device: 2 * grad_loss / (P * mask.sum()), 0 when the mask has no removed patch.
at::Tensor gradient_scale(const at::Tensor& mask, int64_t P, const at::Tensor* grad_loss) {
  at::Tensor scale = at::empty({1}, mask.options());
  const at::Tensor g = grad_loss ? grad_loss->to(at::kFloat) : at::Tensor();  // fp32 already: no copy
  cuda::masked_mse_scale_kernel<kTotalThreads><<<1, kTotalThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      mask.const_data_ptr<float>(), mask.numel(), P, grad_loss ? g.const_data_ptr<float>() : nullptr,
      scale.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return scale;
}

// [1] float32 2 / P: per-token losses (each token's upstream gradient folded into its weight).
at::Tensor token_scale(const at::Tensor& mask, int64_t P) {
  return at::full({1}, 2.0 / static_cast<double>(P), mask.options());
}

void launch(const Inputs& in, const at::Tensor& imgs, const at::Tensor& mask, at::IntArrayRef patch_size, bool norm,
            bool per_channel, double eps, const at::Tensor& scale, float* partial, at::Tensor* grad_pred,
            at::Tensor* grad_imgs) {
  const at::Tensor& pred = in.pred;
  const int64_t rows = pred.size(0) * pred.size(1);
  if (rows == 0) return;
  TORCH_CHECK(rows <= 2147483647LL, "mae_kernels::masked_mse_loss: too many rows for one launch (", rows, ")");
  const MseLossGeometry g =
      mse_loss_geometry(pred, imgs, mask, in.ids ? &*in.ids : nullptr, in.frames ? &*in.frames : nullptr,
                        in.pixel_norm ? &*in.pixel_norm : nullptr, patch_size, norm, per_channel, eps);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_mse_loss_cuda", [&] {
    using pred_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "masked_mse_loss_cuda", [&] {
      cuda::masked_mse_rows_kernel<pred_t, scalar_t, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
          g, pred.const_data_ptr<pred_t>(), imgs.const_data_ptr<scalar_t>(), mask.const_data_ptr<float>(),
          in.ids ? in.ids->const_data_ptr<int64_t>() : nullptr, scale.const_data_ptr<float>(), partial,
          grad_pred ? grad_pred->data_ptr<pred_t>() : nullptr,
          grad_imgs ? grad_imgs->data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// reduction="none": w * l per token, [N, L] fp32 (0 where no row predicts the token or its weight is 0), from the
// row partials w * sum_i d_i^2 (ids are distinct per row: scatter_ writes each token once).
at::Tensor per_token_loss(const at::Tensor& partial, const std::optional<at::Tensor>& ids, const at::Tensor& mask,
                          int64_t P) {
  const int64_t N = mask.size(0), L = mask.size(1);
  const at::Tensor rows = partial.view({N, -1}) / static_cast<double>(P);
  if (!ids) return rows;
  return at::zeros({N, L}, partial.options()).scatter_(1, *ids, rows);
}

// Three launches: the scale, the rows, the total (per-token losses: a division and a scatter instead).
std::tuple<at::Tensor, at::Tensor> masked_mse_loss_cuda(
    const at::Tensor& pred_in, const at::Tensor& imgs, const at::Tensor& mask_in,
    const std::optional<at::Tensor>& ids_in, at::IntArrayRef patch_size, bool norm_pix_loss, double eps,
    bool with_grad, const std::optional<at::Tensor>& frames, const std::optional<at::Tensor>& pixel_norm,
    bool per_channel, bool per_token) {
  const c10::cuda::CUDAGuard guard(imgs.device());
  const Inputs in = prepare(pred_in, imgs, mask_in, ids_in, frames, pixel_norm);
  const int64_t P = in.pred.size(2);
  const at::Tensor scale = per_token ? token_scale(in.mask, P) : gradient_scale(in.mask, P, nullptr);
  const int64_t rows = in.pred.size(0) * in.pred.size(1);
  at::Tensor partial = at::empty({rows}, in.mask.options());
  at::Tensor grad_pred = with_grad ? at::empty(in.pred.sizes(), in.pred.options()) : in.pred.new_empty({0});
  launch(in, imgs, in.mask, patch_size, norm_pix_loss, per_channel, eps, scale, partial.data_ptr<float>(),
         with_grad ? &grad_pred : nullptr, nullptr);
  if (per_token) return {per_token_loss(partial, in.ids, in.mask, P), grad_pred};
  at::Tensor loss = at::empty({}, in.mask.options());
  cuda::masked_mse_total_kernel<kTotalThreads><<<1, kTotalThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      partial.const_data_ptr<float>(), rows, scale.const_data_ptr<float>(), loss.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, grad_pred};
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& pred_in, const at::Tensor& imgs, const at::Tensor& mask_in,
    const std::optional<at::Tensor>& ids_in, at::IntArrayRef patch_size, bool norm_pix_loss, double eps,
    bool need_pred, bool need_imgs, const std::optional<at::Tensor>& frames,
    const std::optional<at::Tensor>& pixel_norm, bool per_channel, bool per_token) {
  TORCH_CHECK(!need_imgs || (!frames && !pixel_norm && !per_channel),
              "mae_kernels::masked_mse_loss_backward: no imgs gradient with target_frames, pixel_norm or "
              "per_channel (the target is data there)");
  const c10::cuda::CUDAGuard guard(imgs.device());
  const Inputs in = prepare(pred_in, imgs, mask_in, ids_in, frames, pixel_norm);
  const int64_t P = in.pred.size(2);
  // per-token losses: each token's weight times its upstream gradient, 2 / P
  const at::Tensor mask = per_token ? (in.mask * grad_loss.to(at::kFloat)).contiguous() : in.mask;
  const at::Tensor scale = per_token ? token_scale(in.mask, P) : gradient_scale(in.mask, P, &grad_loss);
  at::Tensor grad_pred = need_pred ? at::empty(in.pred.sizes(), in.pred.options()) : in.pred.new_empty({0});
  at::Tensor grad_imgs = need_imgs ? at::zeros(imgs.sizes(), imgs.options()) : imgs.new_empty({0});
  if (need_pred || need_imgs) {
    launch(in, imgs, mask, patch_size, norm_pix_loss, per_channel, eps, scale, nullptr,
           need_pred ? &grad_pred : nullptr, need_imgs ? &grad_imgs : nullptr);
  }
  return {grad_pred, grad_imgs};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("masked_mse_loss", &masked_mse_loss_cuda);
  m.impl("masked_mse_loss_backward", &masked_mse_loss_backward_cuda);
}

}  // namespace mae_kernels
