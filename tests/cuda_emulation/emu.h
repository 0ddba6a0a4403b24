// A small CUDA emulator for testing csrc/cuda on a machine without a GPU: tests/cuda_emulation/build.py compiles
// the real .cu/.cuh sources as C++ against this header (force-included) and the stub CUDA headers beside it.
//
// Every CUDA thread of a block runs as a fiber (its own stack) on one OS thread; blocks are spread over a few OS
// threads (MAE_KERNELS_EMU_THREADS), each running its blocks one after another.
// __syncthreads() and the warp shuffles switch fibers, so barrier and shuffle semantics are those of a GPU, and
// the emulator checks what a GPU would not tell you:
//  - launch configurations (empty grids, block and grid limits, __launch_bounds__, shared memory sizes and the
//    opt-in attribute);
//  - every __syncthreads() of a phase is the same call site, reached by every live thread (else: divergence);
//  - warp shuffles: every lane named in the mask arrives (else: deadlock or divergence);
//  - shared memory: bounds of every access, reads of never-written bytes, and data races (two threads touching
//    the same element between two barriers, one of them writing), like compute-sanitizer's racecheck.
// Threads within a phase run in the order MAE_KERNELS_EMU_ORDER says (forward, reverse or a seeded shuffle):
// results that depend on it reveal races in global memory.
#pragma once

#include <cxxabi.h>
#include <dlfcn.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

// ---- CUDA language surface ---------------------------------------------------------------------------------
#define __global__ inline
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)  // build.py turns it into emu::check_launch_bounds in the kernel

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  unsigned x, y, z, w;
};
using cudaStream_t = struct CUstream_st*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// ---- fibers: a stack each; switched by a few instructions on x86-64 (swapcontext makes a system call) ----------
#if defined(__x86_64__)
extern "C" void emu_switch_context(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .weak emu_switch_context
  .type emu_switch_context, @function
emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_context, .-emu_switch_context
  .popsection
)");

namespace emu {
struct Context {
  void* sp = nullptr;
};
inline void switch_to(Context& from, Context& to) { emu_switch_context(&from.sp, to.sp); }
inline void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
  void** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15));
  *--sp = nullptr;                         // entry's return address (it never returns)
  *--sp = reinterpret_cast<void*>(entry);  // taken by `ret`
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp, rbx, r12-r15
  c.sp = sp;
}
}  // namespace emu
#else
namespace emu {
struct Context {
  ucontext_t uc;
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
}  // namespace emu
#endif

namespace emu {

// Emulated device: few SMs, so that grid-stride loops sized by the SM count really loop.
constexpr int kMultiProcessorCount = 2;
constexpr int64_t kDefaultSharedBytes = 48 * 1024;   // without the opt-in attribute
constexpr int64_t kMaxSharedBytes = 227 * 1024;      // sm_90 opt-in maximum per block
constexpr size_t kStackBytes = 128 * 1024;

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error("CUDA emulation: " + what); }

enum class State { kRunnable, kBarrier, kWarp, kDone };

struct Fiber {
  Context ctx;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = State::kRunnable;
  int barrier_line = 0;
  unsigned warp_mask = 0;
};

struct Shadow {  // per byte of shared memory: who touched it in which phase
  uint32_t write_phase = 0, read_phase = 0;
  int32_t writer = -1, reader = -1;  // reader -2: several threads
  bool written = false;
};

struct Block {
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  Context scheduler;
  std::exception_ptr error;
  uint32_t phase = 1;
  int64_t dynamic_bytes = 0, limit_bytes = 0, used_bytes = 0;
  std::vector<unsigned char> arena;
  std::vector<Shadow> shadow;
  std::map<int, int64_t> static_sites;  // call site -> offset in the arena
  std::vector<unsigned char> shuffle;   // 16 bytes per lane
  std::vector<char*> stacks;            // one per thread
};

inline thread_local Block* tl_block = nullptr;

inline Block& block() {
  if (tl_block == nullptr) fail("device code called outside a kernel launch");
  return *tl_block;
}
inline Fiber& self() { return *block().current; }

inline void yield() {
  Block& b = block();
  Fiber* f = b.current;
  switch_to(f->ctx, b.scheduler);
}

// A kernel declared __launch_bounds__(max_threads) fails to launch with more threads per block.
inline void check_launch_bounds(int64_t max_threads) {
  const dim3& t = block().block_dim;
  const int64_t threads = int64_t(t.x) * t.y * t.z;
  if (threads > max_threads) {
    fail("launch of " + std::to_string(threads) + " threads per block above the kernel's __launch_bounds__(" +
         std::to_string(max_threads) + ")");
  }
}

inline const uint3& thread_idx() { return self().tid; }
inline const uint3& block_idx() { return block().block_idx; }
inline const dim3& block_dim() { return block().block_dim; }
inline const dim3& grid_dim() { return block().grid_dim; }

inline void syncthreads(int line) {
  Fiber& f = self();
  f.state = State::kBarrier;
  f.barrier_line = line;
  yield();
}

template <typename T>
T shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 16, "shuffle of a type wider than 16 bytes");
  Block& b = block();
  Fiber& f = self();
  const int lane = f.linear % 32, warp_base = f.linear - lane;
  if (!(mask >> lane & 1u)) fail("__shfl_xor_sync called by a lane that is not in its mask");
  std::memcpy(&b.shuffle[static_cast<size_t>(f.linear) * 16], &v, sizeof(T));
  f.state = State::kWarp;
  f.warp_mask = mask;
  yield();  // every lane of the mask has written its value
  const int src = lane ^ lane_mask;
  T out = v;
  if (src < 32 && (mask >> src & 1u)) std::memcpy(&out, &b.shuffle[static_cast<size_t>(warp_base + src) * 16], sizeof(T));
  f.state = State::kWarp;
  f.warp_mask = mask;
  yield();  // every lane has read before any writes again
  return out;
}

// ---- shared memory with bounds, initialisation and race checks ---------------------------------------------
[[noreturn]] inline void race(const char* kind, int64_t offset, int32_t first, int32_t second) {
  std::ostringstream msg;
  msg << "shared-memory race (" << kind << ") at byte " << offset << " between threads "
      << (first == -2 ? std::string("(several)") : std::to_string(first)) << " and " << second
      << " with no __syncthreads() between them";
  fail(msg.str());
}

// Elements are tracked by their first byte (the kernels never alias one shared array with another type).
inline void check_access(int64_t offset, bool write) {
  Block& b = block();
  const int32_t t = b.current->linear;
  Shadow& s = b.shadow[static_cast<size_t>(offset)];
  if (write) {
    if (s.write_phase == b.phase && s.writer != t) race("write after write", offset, s.writer, t);
    if (s.read_phase == b.phase && s.reader != t) race("write after read", offset, s.reader, t);
    s.write_phase = b.phase;
    s.writer = t;
    s.written = true;
    return;
  }
  if (!s.written) fail("read of uninitialised shared memory at byte " + std::to_string(offset) + " by thread " + std::to_string(t));
  if (s.write_phase == b.phase && s.writer != t) race("read after write", offset, s.writer, t);
  if (s.read_phase != b.phase) {
    s.read_phase = b.phase;
    s.reader = t;
  } else if (s.reader != t) {
    s.reader = -2;
  }
}

template <typename T>
struct SharedRef {
  T* ptr;
  int64_t offset;
  operator T() const {
    check_access(offset, false);
    return *ptr;
  }
  SharedRef& operator=(T v) {
    check_access(offset, true);
    *ptr = v;
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }
};

template <typename T>
struct Shared {
  T* base;
  int64_t count, offset;
  SharedRef<T> operator[](int64_t i) const {
    if (i < 0 || i >= count) {
      fail("shared-memory index " + std::to_string(i) + " out of bounds [0, " + std::to_string(count) + ")");
    }
    return {base + i, offset + i * static_cast<int64_t>(sizeof(T))};
  }
};

// `__shared__ T name[count];` (rewritten by build.py; `site` numbers the declaration).
template <typename T>
Shared<T> static_shared(int64_t count, int site) {
  Block& b = block();
  auto it = b.static_sites.find(site);
  if (it == b.static_sites.end()) {
    const int64_t align = alignof(T) < 16 ? 16 : alignof(T);
    const int64_t offset = (b.used_bytes + align - 1) / align * align;
    if (offset + count * static_cast<int64_t>(sizeof(T)) > b.limit_bytes) {
      fail("static shared memory exceeds the block's limit of " + std::to_string(b.limit_bytes) + " bytes");
    }
    b.used_bytes = offset + count * static_cast<int64_t>(sizeof(T));
    it = b.static_sites.emplace(site, offset).first;
  }
  return {reinterpret_cast<T*>(b.arena.data() + it->second), count, it->second};
}

// `extern __shared__ T name[];`: the launch's dynamic shared memory (at offset 0).
template <typename T>
Shared<T> dynamic_shared() {
  Block& b = block();
  return {reinterpret_cast<T*>(b.arena.data()), b.dynamic_bytes / static_cast<int64_t>(sizeof(T)), 0};
}

// ---- launches ----------------------------------------------------------------------------------------------
inline std::map<const void*, int64_t>& max_dynamic_shared() {
  static std::map<const void*, int64_t> m;
  return m;
}

struct LaunchConfig {
  dim3 grid, threads;
  int64_t shared_bytes;
  LaunchConfig(dim3 g, dim3 t, size_t smem = 0, cudaStream_t = nullptr)
      : grid(g), threads(t), shared_bytes(static_cast<int64_t>(smem)) {}
};

enum class Order { kForward, kReverse, kShuffle };

inline Order order() {
  const char* v = std::getenv("MAE_KERNELS_EMU_ORDER");
  const std::string s = v ? v : "forward";
  if (s == "forward") return Order::kForward;
  if (s == "reverse") return Order::kReverse;
  if (s == "shuffle") return Order::kShuffle;
  fail("MAE_KERNELS_EMU_ORDER must be forward, reverse or shuffle, got " + s);
}

// Fiber stacks, reused across launches and worker threads.
class StackPool {
 public:
  std::vector<char*> take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<char*> out;
    while (out.size() < n && !free_.empty()) {
      out.push_back(free_.back());
      free_.pop_back();
    }
    while (out.size() < n) out.push_back(static_cast<char*>(std::malloc(kStackBytes)));
    return out;
  }
  void give(const std::vector<char*>& stacks) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.insert(free_.end(), stacks.begin(), stacks.end());
  }

 private:
  std::mutex mutex_;
  std::vector<char*> free_;
};

inline StackPool& stack_pool() {
  static StackPool pool;
  return pool;
}

// OS threads that run blocks at once (MAE_KERNELS_EMU_THREADS, default: the machine's cores, at most 8).
inline int worker_threads() {
  const char* v = std::getenv("MAE_KERNELS_EMU_THREADS");
  const int n = v ? std::atoi(v) : static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, std::min(n, 8));
}

inline thread_local const std::function<void()>* tl_body = nullptr;

inline void fiber_entry() {
  Block& b = block();
  try {
    (*tl_body)();
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
  b.current->state = State::kDone;
  switch_to(b.current->ctx, b.scheduler);  // never resumed
}

// Releases the threads waiting at a warp shuffle or a barrier; fails on divergence or deadlock.
inline bool release(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  bool released = false;
  for (int w = 0; w < n; w += 32) {
    int waiting = 0;
    unsigned mask = 0;
    for (int l = w; l < std::min(n, w + 32); ++l) {
      if (b.fibers[l].state == State::kWarp) {
        ++waiting;
        mask = b.fibers[l].warp_mask;
      }
    }
    if (waiting == 0) continue;
    bool ready = true;
    for (int lane = 0; lane < 32; ++lane) {
      if (!(mask >> lane & 1u)) continue;
      if (w + lane >= n) fail("a warp shuffle's mask names lane " + std::to_string(lane) + " beyond the block");
      const Fiber& f = b.fibers[w + lane];
      if (f.state == State::kDone) fail("a warp shuffle's mask names an exited lane (thread " + std::to_string(w + lane) + ")");
      if (f.state != State::kWarp || f.warp_mask != mask) ready = false;
    }
    if (ready) {
      for (int lane = 0; lane < 32; ++lane) {
        if (mask >> lane & 1u) b.fibers[w + lane].state = State::kRunnable;
      }
      released = true;
    }
  }
  if (released) return true;
  int at_barrier = 0, done = 0, line = -1;
  for (const Fiber& f : b.fibers) {
    if (f.state == State::kDone) ++done;
    if (f.state != State::kBarrier) continue;
    ++at_barrier;
    if (line == -1) line = f.barrier_line;
    if (f.barrier_line != line) {
      fail("divergent __syncthreads(): threads wait at lines " + std::to_string(line) + " and " +
           std::to_string(f.barrier_line));
    }
  }
  if (at_barrier == 0) return false;
  if (at_barrier + done != n) fail("deadlock: threads wait at a __syncthreads() while others wait at a shuffle");
  ++b.phase;
  for (Fiber& f : b.fibers) {
    if (f.state == State::kBarrier) f.state = State::kRunnable;
  }
  return true;
}

inline void run_block(Block& b, const std::function<void()>& body, Order ord, std::mt19937& rng) {
  const int n = static_cast<int>(b.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::kRunnable;
    start_context(f.ctx, b.stacks[i], kStackBytes, fiber_entry);
  }
  std::vector<int> sequence(n);
  std::iota(sequence.begin(), sequence.end(), 0);
  if (ord == Order::kReverse) std::reverse(sequence.begin(), sequence.end());
  tl_body = &body;
  while (true) {
    if (ord == Order::kShuffle) std::shuffle(sequence.begin(), sequence.end(), rng);
    for (int i : sequence) {
      Fiber& f = b.fibers[i];
      if (f.state != State::kRunnable) continue;
      b.current = &f;
      switch_to(b.scheduler, f.ctx);
      if (b.error) std::rethrow_exception(b.error);
    }
    if (std::all_of(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return f.state == State::kDone; })) break;
    if (!release(b)) fail("deadlock: no thread can run");
  }
}

// Launches per kernel, written at exit to the file MAE_KERNELS_EMU_STATS names ("count<TAB>kernel" lines), so
// that a test can check the emulated kernels really ran; and the largest grid (blocks) of each kernel's launches to
// the file MAE_KERNELS_EMU_GRIDS names ("blocks<TAB>kernel"), so that a test can check a launcher's parallelism.
struct LaunchStats {
  std::map<const void*, int64_t> counts, max_blocks;
  static std::string name_of(const void* kernel) {
    Dl_info info{};
    std::string name = "?";
    if (dladdr(kernel, &info) != 0 && info.dli_sname != nullptr) {
      int status = 0;
      char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
      name = status == 0 ? demangled : info.dli_sname;
      std::free(demangled);
    }
    return name;
  }
  static void write(const char* variable, const std::map<const void*, int64_t>& values) {
    const char* path = std::getenv(variable);
    if (path == nullptr || values.empty()) return;
    std::ofstream out(path, std::ios::app);
    for (const auto& [kernel, value] : values) out << value << "\t" << name_of(kernel) << "\n";
  }
  ~LaunchStats() {
    write("MAE_KERNELS_EMU_STATS", counts);
    write("MAE_KERNELS_EMU_GRIDS", max_blocks);
  }
};
inline LaunchStats launch_stats;

template <typename... P, typename... A>
void launch(const LaunchConfig& cfg, void (*kernel)(P...), A&&... args) {
  ++launch_stats.counts[reinterpret_cast<const void*>(kernel)];
  const dim3 g = cfg.grid, t = cfg.threads;
  int64_t& most = launch_stats.max_blocks[reinterpret_cast<const void*>(kernel)];
  most = std::max<int64_t>(most, int64_t(g.x) * g.y * g.z);
  const int64_t threads = int64_t(t.x) * t.y * t.z;
  if (int64_t(g.x) * g.y * g.z == 0 || threads == 0) fail("invalid configuration: an empty grid or block");
  if (threads > 1024 || t.x > 1024 || t.y > 1024 || t.z > 64) fail("invalid configuration: block too large");
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u) fail("invalid configuration: grid too large");
  int64_t limit = kDefaultSharedBytes;
  auto it = max_dynamic_shared().find(reinterpret_cast<const void*>(kernel));
  if (it != max_dynamic_shared().end()) limit = std::max(limit, it->second);
  if (cfg.shared_bytes > limit) {
    fail("dynamic shared memory of " + std::to_string(cfg.shared_bytes) + " bytes above the kernel's limit of " +
         std::to_string(limit) + " (cudaFuncSetAttribute)");
  }
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);  // converted once, as the launch would
  const std::function<void()> body = [&]() {
    auto copy = params;  // each thread gets its own parameters
    std::apply(kernel, copy);
  };
  const Order ord = order();
  const int64_t blocks = int64_t(g.x) * g.y * g.z;
  const int workers = static_cast<int>(std::min<int64_t>(blocks, worker_threads()));
  std::vector<std::exception_ptr> errors(workers);
  // Worker w runs blocks w, w + workers, ... (in reverse with MAE_KERNELS_EMU_ORDER=reverse).
  auto work = [&](int w) {
    Block b;
    b.block_dim = t;
    b.grid_dim = g;
    b.dynamic_bytes = cfg.shared_bytes;
    b.limit_bytes = limit;  // >= the dynamic bytes (checked above)
    b.arena.assign(static_cast<size_t>(b.limit_bytes) + 16, 0xA5);  // garbage, as on a GPU
    b.shadow.assign(b.arena.size(), Shadow{});
    b.shuffle.resize(static_cast<size_t>(threads) * 16);
    b.fibers.resize(static_cast<size_t>(threads));
    for (int64_t i = 0; i < threads; ++i) {
      b.fibers[i].linear = static_cast<int>(i);
      b.fibers[i].tid = {static_cast<unsigned>(i % t.x), static_cast<unsigned>(i / t.x % t.y),
                         static_cast<unsigned>(i / (int64_t(t.x) * t.y))};
    }
    b.stacks = stack_pool().take(static_cast<size_t>(threads));
    std::mt19937 rng(12345 + w);
    Block* saved = tl_block;
    tl_block = &b;
    try {
      const int64_t mine = (blocks - w + workers - 1) / workers;
      for (int64_t j = 0; j < mine; ++j) {
        const int64_t i = w + (ord == Order::kReverse ? mine - 1 - j : j) * workers;
        b.block_idx = {static_cast<unsigned>(i % g.x), static_cast<unsigned>(i / g.x % g.y),
                       static_cast<unsigned>(i / (int64_t(g.x) * g.y))};
        b.phase = 1;
        b.used_bytes = b.dynamic_bytes;
        b.static_sites.clear();
        run_block(b, body, ord, rng);
        // Fresh garbage and history for the next block, over the bytes this one could touch.
        std::fill_n(b.arena.begin(), b.used_bytes, static_cast<unsigned char>(0xA5));
        std::fill_n(b.shadow.begin(), b.used_bytes, Shadow{});
      }
    } catch (...) {
      errors[w] = std::current_exception();
    }
    tl_block = saved;
    stack_pool().give(b.stacks);
  };
  std::vector<std::thread> others;
  for (int w = 1; w < workers; ++w) others.emplace_back(work, w);
  work(0);
  for (std::thread& th : others) th.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

template <typename F>
cudaError_t func_set_attribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > kMaxSharedBytes) fail("cudaFuncSetAttribute: " + std::to_string(value) + " bytes of shared memory");
    max_dynamic_shared()[reinterpret_cast<const void*>(kernel)] = value;
  }
  return cudaSuccess;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define __syncthreads() ::emu::syncthreads(__LINE__)
#define __shfl_xor_sync(mask, v, lane_mask) ::emu::shfl_xor_sync(mask, v, lane_mask)
#define cudaFuncSetAttribute(kernel, attr, value) ::emu::func_set_attribute(kernel, attr, value)

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
