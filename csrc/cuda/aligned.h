// Host-side test the launchers use to choose a kernel's vector width.
#pragma once

#include <cstdint>

namespace mae_kernels {

inline bool aligned(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace mae_kernels
