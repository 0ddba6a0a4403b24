// Host-side CUDA runtime and c10/ATen CUDA pieces used by csrc/cuda, for the emulator (tests/cuda_emulation):
// one emulated device, tensors on the CPU.
#pragma once
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "emu.h"

struct cudaDeviceProp {  // the fields csrc/cuda reads
  int multiProcessorCount = ::emu::kMultiProcessorCount;
};

namespace at {
namespace cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int64_t = -1) { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp prop;
  return &prop;
}
}  // namespace cuda
}  // namespace at

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace cuda
}  // namespace c10

#define C10_CUDA_CHECK(expr)                                                     \
  do {                                                                           \
    const cudaError_t emu_err = (expr);                                          \
    TORCH_CHECK(emu_err == cudaSuccess, "CUDA emulation: error ", emu_err);      \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
