// Kernels with known bugs (and their fixed twins) that the CUDA emulator must catch or pass:
// tests/test_cuda_emulation.py calls run_case(name) through ctypes; it returns "" or the emulator's error.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "emu.h"

namespace {

__global__ void race(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = s[threadIdx.x > 0 ? threadIdx.x - 1 : 0];  // another thread's element, no barrier
}

__global__ void no_race(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void write_after_read(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[0];
  if (threadIdx.x == 63) s[0] = 2.0f;  // others may still read s[0]
}

__global__ void divergent_barrier(float*) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void shuffle_against_barrier(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);  // waits for lanes 0-15, which wait for it
  }
}

__global__ void partial_warp_shuffle(float* out) {
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);  // lanes 16-31 absent
}

__global__ void shared_out_of_bounds(float* out) {
  __shared__ float s[64];
  s[threadIdx.x + 1] = 0.0f;
  out[threadIdx.x] = 0.0f;
}

__global__ void uninitialised_read(float* out) {
  __shared__ float s[64];
  if (threadIdx.x > 0) s[threadIdx.x] = 0.0f;
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// Block sum through warp shuffles and one float per warp: out[0] = 0 + 1 + ... + 255.
__global__ void block_sum(float* out) {
  __shared__ float warp_sums[8];
  float v = static_cast<float>(threadIdx.x);
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < 8; ++w) total += warp_sums[w];
    out[0] = total;
  }
}

// Every thread writes the same global element: the value left depends on the order threads run in.
__global__ void global_last_writer(float* out) { out[0] = static_cast<float>(threadIdx.x); }

template <int kThreads>
__global__ void __launch_bounds__(kThreads) bounded(float* out) {
  out[threadIdx.x] = 1.0f;
}

__global__ void dynamic_shared(float* out) {
  extern __shared__ float s[];
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void global_out_of_bounds(float* out) { out[threadIdx.x + 1] = 0.0f; }  // one past the end

float g_out[1024];

std::string check_equal(float got, float want) {
  return got == want ? "" : "wrong value " + std::to_string(got) + ", expected " + std::to_string(want);
}

template <typename... Args>
std::function<std::string()> launch_only(Args... args) {
  return [=] {
    emu::launch(args...);
    return std::string();
  };
}

// Case name -> "" or what went wrong; an unknown name is an error too (a misspelt case never passes).
std::string run(const std::string& name) {
  static std::vector<float> buffer(64);  // heap memory, for AddressSanitizer
  const std::map<std::string, std::function<std::string()>> cases = {
      {"race", launch_only(emu::LaunchConfig(1, 64), race, g_out)},
      {"no_race", launch_only(emu::LaunchConfig(1, 64), no_race, g_out)},
      {"write_after_read", launch_only(emu::LaunchConfig(1, 64), write_after_read, g_out)},
      {"divergent_barrier", launch_only(emu::LaunchConfig(1, 64), divergent_barrier, g_out)},
      {"shuffle_against_barrier", launch_only(emu::LaunchConfig(1, 32), shuffle_against_barrier, g_out)},
      {"partial_warp_shuffle", launch_only(emu::LaunchConfig(1, 32), partial_warp_shuffle, g_out)},
      {"shared_out_of_bounds", launch_only(emu::LaunchConfig(1, 64), shared_out_of_bounds, g_out)},
      {"uninitialised_read", launch_only(emu::LaunchConfig(1, 64), uninitialised_read, g_out)},
      {"block_sum",
       [] {
         emu::launch(emu::LaunchConfig(1, 256), block_sum, g_out);
         return check_equal(g_out[0], 255.0f * 256.0f / 2.0f);
       }},
      {"global_last_writer",
       [] {
         emu::launch(emu::LaunchConfig(1, 64), global_last_writer, g_out);
         return "last writer " + std::to_string(static_cast<int>(g_out[0]));
       }},
      // caught by AddressSanitizer (MAE_KERNELS_EMU_ASAN), not by the emulator
      {"global_out_of_bounds", launch_only(emu::LaunchConfig(1, 64), global_out_of_bounds, buffer.data())},
      {"within_launch_bounds", launch_only(emu::LaunchConfig(1, 128), bounded<128>, g_out)},
      {"above_launch_bounds", launch_only(emu::LaunchConfig(1, 256), bounded<128>, g_out)},
      {"empty_grid", launch_only(emu::LaunchConfig(0, 64), no_race, g_out)},
      {"block_too_large", launch_only(emu::LaunchConfig(1, 2048), no_race, g_out)},
      {"dynamic_shared_over_default", launch_only(emu::LaunchConfig(1, 64, 64 * 1024), dynamic_shared, g_out)},
      {"dynamic_shared_opt_in",
       [] {
         cudaFuncSetAttribute(dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
         emu::launch(emu::LaunchConfig(1, 64, 64 * 1024), dynamic_shared, g_out);
         return check_equal(g_out[5], 1.0f);
       }},
      {"dynamic_shared_too_small", launch_only(emu::LaunchConfig(1, 64, 32 * sizeof(float)), dynamic_shared, g_out)},
  };
  const auto it = cases.find(name);
  return it == cases.end() ? "unknown case " + name : it->second();
}

}  // namespace

extern "C" const char* run_case(const char* name) {
  static std::string result;
  try {
    result = run(name);
  } catch (const std::exception& e) {
    result = e.what();
  }
  return result.c_str();
}
