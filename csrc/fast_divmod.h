// Division by a divisor fixed at launch, without a division instruction: a GPU has none, and nvcc's 64-bit
// division by a runtime value is a subroutine of ~70 instructions (32-bit: ~20, through the float reciprocal
// unit). Per-element index math divides by C, p, the grid width or a row length; FastDivmod precomputes a
// multiplier on the host (Granlund-Montgomery), so each division becomes one high multiply and a shift.
// Torch-free, host/device (the CPU kernels and the CUDA emulator use the same code).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MAE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MAE_HOST_DEVICE inline
#endif

namespace mae_kernels {

// q = x / d and r = x % d for 0 <= x < 2^63 and a divisor d >= 1: with l = ceil(log2 d) and
// m = ceil(2^(63 + l) / d) < 2^64, floor(m * x / 2^(63 + l)) == floor(x / d) (m * d - 2^(63 + l) < d <= 2^l).
struct FastDivmod {
  int64_t d = 1;
  uint64_t mul = 0;   // 0 for d == 1
  unsigned shift = 0; // l - 1: the high 64 bits of m * x, shifted right

  FastDivmod() = default;
  explicit FastDivmod(int64_t divisor) : d(divisor) {
    if (d <= 1) return;  // d == 1: the identity (d < 1 is never divided by)
    unsigned l = 0;
    while ((uint64_t(1) << l) < uint64_t(d)) ++l;
    const unsigned __int128 num = static_cast<unsigned __int128>(1) << (63 + l);
    mul = static_cast<uint64_t>((num + uint64_t(d) - 1) / uint64_t(d));
    shift = l - 1;
  }

  MAE_HOST_DEVICE int64_t div(int64_t x) const {
    if (mul == 0) return x;
#if defined(__CUDA_ARCH__)
    const uint64_t hi = __umul64hi(static_cast<uint64_t>(x), mul);
#else
    const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * mul) >> 64);
#endif
    return static_cast<int64_t>(hi >> shift);
  }
  // Quotient, and the remainder in *rem.
  MAE_HOST_DEVICE int64_t divmod(int64_t x, int64_t* rem) const {
    const int64_t q = div(x);
    *rem = x - q * d;
    return q;
  }
};

}  // namespace mae_kernels
