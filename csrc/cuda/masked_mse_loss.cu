// CUDA masked MSE loss: checks, device guard, current stream, dtype dispatch and launch of
// kernels/masked_mse_loss.cuh (one block per prediction row, framed by two one-block kernels). The loss is
// sum(per-row partials) / (P * mask.sum()): deterministic, no atomics.
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
                  const std::optional<at::Tensor>& ids) {
  TORCH_CHECK(pred.is_cuda() && imgs.is_cuda() && mask.is_cuda() && (!ids || ids->is_cuda()),
              "mae_kernels::masked_mse_loss (CUDA): every tensor must be on the GPU");
  TORCH_CHECK(pred.dim() == 3 && imgs.dim() == 4 && mask.dim() == 2, "mae_kernels::masked_mse_loss: bad ranks");
  TORCH_CHECK(mask.scalar_type() == at::kFloat, "mae_kernels::masked_mse_loss: mask must be float32");
  TORCH_CHECK(!ids || ids->scalar_type() == at::kLong, "mae_kernels::masked_mse_loss: ids_rows must be int64");
}

// The kernels read pred and ids rows by their strides (the model's pred is a view, x[:, 1:, :]); only a strided
// last dimension is copied.
at::Tensor rows_contiguous(const at::Tensor& t) { return t.size(-1) > 1 && t.stride(-1) != 1 ? t.contiguous() : t; }

struct Inputs {
  at::Tensor pred, mask;
  std::optional<at::Tensor> ids;
};

Inputs prepare(const at::Tensor& pred, const at::Tensor& imgs, const at::Tensor& mask,
               const std::optional<at::Tensor>& ids) {
  check_inputs(pred, imgs, mask, ids);
  return {rows_contiguous(pred), mask.contiguous(),
          ids ? std::optional<at::Tensor>(rows_contiguous(*ids)) : std::nullopt};
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

void launch(const Inputs& in, const at::Tensor& imgs, int64_t patch_size, bool norm, double eps,
            const at::Tensor& scale, float* partial, at::Tensor* grad_pred, at::Tensor* grad_imgs) {
  const at::Tensor& pred = in.pred;
  const int64_t rows = pred.size(0) * pred.size(1);
  if (rows == 0) return;
  TORCH_CHECK(rows <= 2147483647LL, "mae_kernels::masked_mse_loss: too many rows for one launch (", rows, ")");
  const MseLossGeometry g =
      mse_loss_geometry(pred, imgs, in.mask, in.ids ? &*in.ids : nullptr, patch_size, norm, eps);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_mse_loss_cuda", [&] {
    using pred_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "masked_mse_loss_cuda", [&] {
      cuda::masked_mse_rows_kernel<pred_t, scalar_t, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
          g, pred.const_data_ptr<pred_t>(), imgs.const_data_ptr<scalar_t>(), in.mask.const_data_ptr<float>(),
          in.ids ? in.ids->const_data_ptr<int64_t>() : nullptr, scale.const_data_ptr<float>(), partial,
          grad_pred ? grad_pred->data_ptr<pred_t>() : nullptr,
          grad_imgs ? grad_imgs->data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// Three launches: the scale, the rows, the total.
std::tuple<at::Tensor, at::Tensor> masked_mse_loss_cuda(const at::Tensor& pred_in, const at::Tensor& imgs,
                                                        const at::Tensor& mask_in,
                                                        const std::optional<at::Tensor>& ids_in, int64_t patch_size,
                                                        bool norm_pix_loss, double eps, bool with_grad) {
  const c10::cuda::CUDAGuard guard(imgs.device());
  const Inputs in = prepare(pred_in, imgs, mask_in, ids_in);
  const at::Tensor scale = gradient_scale(in.mask, in.pred.size(2), nullptr);
  const int64_t rows = in.pred.size(0) * in.pred.size(1);
  at::Tensor partial = at::empty({rows}, in.mask.options());
  at::Tensor grad_pred = with_grad ? at::empty(in.pred.sizes(), in.pred.options()) : in.pred.new_empty({0});
  launch(in, imgs, patch_size, norm_pix_loss, eps, scale, partial.data_ptr<float>(),
         with_grad ? &grad_pred : nullptr, nullptr);
  at::Tensor loss = at::empty({}, in.mask.options());
  cuda::masked_mse_total_kernel<kTotalThreads><<<1, kTotalThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      partial.const_data_ptr<float>(), rows, scale.const_data_ptr<float>(), loss.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, grad_pred};
}

std::tuple<at::Tensor, at::Tensor> masked_mse_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& pred_in, const at::Tensor& imgs, const at::Tensor& mask_in,
    const std::optional<at::Tensor>& ids_in, int64_t patch_size, bool norm_pix_loss, double eps, bool need_pred,
    bool need_imgs) {
  const c10::cuda::CUDAGuard guard(imgs.device());
  const Inputs in = prepare(pred_in, imgs, mask_in, ids_in);
  const at::Tensor scale = gradient_scale(in.mask, in.pred.size(2), &grad_loss);
  at::Tensor grad_pred = need_pred ? at::empty(in.pred.sizes(), in.pred.options()) : in.pred.new_empty({0});
  at::Tensor grad_imgs = need_imgs ? at::zeros(imgs.sizes(), imgs.options()) : imgs.new_empty({0});
  if (need_pred || need_imgs) {
    launch(in, imgs, patch_size, norm_pix_loss, eps, scale, nullptr, need_pred ? &grad_pred : nullptr,
           need_imgs ? &grad_imgs : nullptr);
  }
  return {grad_pred, grad_imgs};
}

}  // namespace

TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m) {
  m.impl("masked_mse_loss", &masked_mse_loss_cuda);
  m.impl("masked_mse_loss_backward", &masked_mse_loss_backward_cuda);
}

}  // namespace mae_kernels
