// Runs the .cu kernels on the CPU, for testing without a GPU (included by common.cuh when
// HDOPS_HOST_EMULATION is defined; never part of the real build).
//
// A launch runs its blocks one after another; inside a block every CUDA thread is a fiber
// (ucontext) on the calling OS thread. A fiber runs until it finishes or reaches a barrier:
// __syncthreads waits for every thread of the block, a warp shuffle for every lane of its warp.
// So kernels that communicate through shared memory or shuffles run with CUDA's semantics.
// Reported as a launch failure instead of hanging or passing: threads that wait at barriers the
// others never reach, shuffles with exited or missing lanes, invalid launch shapes. Fibers run
// in ascending order in half the blocks and descending in the other (alternating by block and
// by launch), so a missing barrier between threads that read each other's shared memory shows
// in one order or the other.
// What this cannot show: timing, memory coalescing, races between blocks, reads of
// uninitialised shared memory (a block's __shared__ array is a static that keeps its values),
// barriers skipped by exited threads (they count as arrived, as on hardware), and the device's
// floating-point details: rsqrtf is exact here (2 ulp on the device) and nvcc contracts
// multiply-adds into FMAs where g++ does not, so results differ in the last bits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// Blocks run one at a time, so one static per kernel is exactly one block's shared memory.
#undef __shared__
#define __shared__ static

namespace hdemu {

enum class State { Run, WaitBlock, WaitWarp, Done };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear = 0;
  State state = State::Run;
};

// A fiber stack with an inaccessible page below it: an overflow faults at once instead of
// silently corrupting the neighbouring stack.
class Stack {
 public:
  Stack() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    base_ = mmap(nullptr, page_ + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base_ == MAP_FAILED) throw std::bad_alloc();
    mprotect(base_, page_, PROT_NONE);
  }
  ~Stack() { munmap(base_, page_ + kStackBytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  void* top_region() const { return static_cast<char*>(base_) + page_; }
  static constexpr size_t kStackBytes = 64 * 1024;

 private:
  void* base_ = nullptr;
  size_t page_ = 0;
};

struct Launch {
  dim3 grid, block, block_idx;
  std::function<void()> body;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<Stack>> stacks;
  std::vector<double> slots;  // one per thread: the values exchanged by shuffles
  ucontext_t scheduler;
  Fiber* current = nullptr;
  unsigned order = 0;  // flips the fiber order: launch count + block index, mod 2
  std::string error;
};

constexpr unsigned kFullMask = 0xffffffffu;

inline Launch*& active() {
  static Launch* launch = nullptr;
  return launch;
}

inline cudaError_t& last_error() {
  static cudaError_t e = cudaSuccess;
  return e;
}

inline std::string& last_message() {
  static std::string m;
  return m;
}

// Largest gridDim.x a launch gets (0: as asked). Kernels with grid-stride loops must give the
// same result with fewer blocks; tests lower this to run those loops' later iterations.
inline unsigned& max_blocks() {
  static unsigned n = 0;
  return n;
}

inline void fail(const std::string& why) {
  Launch* l = active();
  if (l->error.empty()) l->error = why;
}

inline void entry() {
  Launch* l = active();
  l->body();
  l->current->state = State::Done;  // returning resumes the scheduler (uc_link)
}

// Suspends the calling fiber until the scheduler releases the barrier it waits at.
inline void wait(State s) {
  Launch* l = active();
  Fiber* f = l->current;
  f->state = s;
  swapcontext(&f->ctx, &l->scheduler);
}

inline void sync_threads() { wait(State::WaitBlock); }

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
  Launch* l = active();
  const int me = l->current->linear;
  const int warp0 = me & ~31;
  const int lanes = std::min<int>(32, static_cast<int>(l->fibers.size()) - warp0);
  if (mask != kFullMask) fail("emulation supports only full-warp shuffles (mask 0xffffffff)");
  if (lanes < 32) fail("a full-mask shuffle in a partial warp (the block size is not a multiple of 32)");
  const int src = (me & 31) ^ lane_mask;  // as shfl.bfly: a source lane outside the warp reads its own value
  l->slots[me] = static_cast<double>(v);   // exact for float and double
  wait(State::WaitWarp);                   // every lane has written
  const T r = (src >= 0 && src < lanes) ? static_cast<T>(l->slots[warp0 + src]) : v;
  wait(State::WaitWarp);                   // every lane has read before any writes again
  return r;
}

// Releases the barriers that every thread (block) or every lane (warp) has reached; returns
// false if nothing can run any more although some fibers have not finished (a deadlock).
inline bool release(Launch& l) {
  const int n = static_cast<int>(l.fibers.size());
  bool live = false, all_block = true;
  for (const Fiber& f : l.fibers) {
    if (f.state == State::Done) continue;
    live = true;
    if (f.state != State::WaitBlock) all_block = false;
  }
  if (!live) return true;
  if (all_block) {
    for (Fiber& f : l.fibers)
      if (f.state == State::WaitBlock) f.state = State::Run;
    return true;
  }
  bool released = false;
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int w1 = std::min(n, w0 + 32);
    bool all_warp = true, any_warp = false;
    for (int i = w0; i < w1; ++i) {
      all_warp &= l.fibers[i].state == State::WaitWarp;
      any_warp |= l.fibers[i].state == State::WaitWarp;
    }
    if (all_warp) {  // (a partial warp's shuffle has already failed)
      for (int i = w0; i < w1; ++i) l.fibers[i].state = State::Run;
      released = true;
    } else if (any_warp) {
      for (int i = w0; i < w1; ++i)
        if (l.fibers[i].state == State::Done) fail("a warp shuffle waits for lanes that have exited");
    }
  }
  return released;
}

inline void run_block(Launch& l) {
  const int n = static_cast<int>(l.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = l.fibers[i];
    f.linear = i;
    f.tid = make_uint3(i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y));
    f.state = State::Run;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = l.stacks[i]->top_region();
    f.ctx.uc_stack.ss_size = Stack::kStackBytes;
    f.ctx.uc_link = &l.scheduler;
    makecontext(&f.ctx, entry, 0);
  }
  const bool descending = (l.order + l.block_idx.x + l.block_idx.y + l.block_idx.z) % 2 == 1;
  while (l.error.empty()) {
    bool ran = false;
    for (int k = 0; k < n; ++k) {
      Fiber& f = l.fibers[descending ? n - 1 - k : k];
      if (f.state != State::Run) continue;
      l.current = &f;
      swapcontext(&l.scheduler, &f.ctx);
      ran = true;
    }
    const bool done = std::all_of(l.fibers.begin(), l.fibers.end(), [](const Fiber& f) { return f.state == State::Done; });
    if (done) return;
    if (!release(l) && !ran) fail("deadlock: threads wait at a barrier that the others never reach");
  }
}

inline cudaError_t launch(dim3 grid, dim3 block, size_t shared_bytes, std::function<void()> body) {
  static std::mutex mutex;  // one emulated launch at a time (the shared statics are process-wide)
  std::lock_guard<std::mutex> lock(mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || shared_bytes > 48 * 1024) {
    last_message() = "invalid launch configuration";
    return last_error() = cudaErrorInvalidConfiguration;
  }
  if (max_blocks() != 0) grid.x = std::min(grid.x, max_blocks());
  static unsigned launches = 0;
  Launch l;
  l.order = launches++;
  l.grid = grid;
  l.block = block;
  l.body = std::move(body);
  l.fibers.resize(threads);
  l.slots.assign(threads, 0.0);
  for (uint64_t i = 0; i < threads; ++i) l.stacks.emplace_back(new Stack());
  Launch* saved = active();
  active() = &l;
  for (unsigned z = 0; z < grid.z && l.error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && l.error.empty(); ++y)
      for (unsigned x = 0; x < grid.x && l.error.empty(); ++x) {
        l.block_idx = dim3(x, y, z);
        run_block(l);
      }
  active() = saved;
  if (!l.error.empty()) {
    last_message() = l.error;
    return last_error() = cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

// cudaGetLastError's contract: the last launch error, reset by reading it.
inline cudaError_t take_last_error() {
  const cudaError_t e = last_error();
  last_error() = cudaSuccess;
  return e;
}

}  // namespace hdemu

#define threadIdx (::hdemu::active()->current->tid)
#define blockIdx (::hdemu::active()->block_idx)
#define blockDim (::hdemu::active()->block)
#define gridDim (::hdemu::active()->grid)

inline void __syncthreads() { ::hdemu::sync_threads(); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) ::hdemu::fail("emulation supports only width-32 shuffles");
  return ::hdemu::shfl_xor(mask, v, lane_mask);
}
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }

#define HD_LAUNCH(kernel, grid, block, shared, stream, ...) \
  ::hdemu::launch(dim3(grid), dim3(block), (shared), [&] { kernel(__VA_ARGS__); })
#define HD_LAST_ERROR() ::hdemu::take_last_error()
