// Runs the .cu kernels on the CPU, for testing without a GPU (included by common.cuh when
// HDOPS_HOST_EMULATION is defined; never part of the real build).
//
// A launch runs its blocks one after another; inside a block every CUDA thread is a fiber
// (ucontext) on the calling OS thread. A fiber runs until it finishes or reaches a barrier:
// __syncthreads waits for every thread of the block, a warp shuffle for every lane of its warp.
// So kernels that communicate through shared memory or shuffles run with CUDA's semantics, and
// a barrier that some threads never reach is reported as a launch failure instead of hanging.
// What this cannot show: timing, memory coalescing, races between blocks, and the device's own
// floating-point intrinsics (rsqrtf here is exact to float rounding; CUDA's is within 2 ulp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>

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

struct Launch {
  dim3 grid, block, block_idx;
  std::function<void()> body;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<double> slots;  // one per thread: the values exchanged by shuffles
  ucontext_t scheduler;
  Fiber* current = nullptr;
  std::string error;
};

constexpr size_t kStackBytes = 64 * 1024;
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

inline int warp_of(int linear) { return linear / 32; }

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
  Launch* l = active();
  if (mask != kFullMask) fail("emulation supports only full-warp shuffles (mask 0xffffffff)");
  const int me = l->current->linear;
  const int other = (me & ~31) | ((me & 31) ^ (lane_mask & 31));
  l->slots[me] = static_cast<double>(v);  // exact for float and double
  wait(State::WaitWarp);                  // every lane has written
  if (other >= static_cast<int>(l->fibers.size())) fail("shuffle reads a lane past the end of the block");
  const T r = static_cast<T>(l->slots[std::min<int>(other, static_cast<int>(l->fibers.size()) - 1)]);
  wait(State::WaitWarp);                  // every lane has read before any writes again
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
    if (all_warp) {
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
    f.ctx.uc_stack.ss_sp = l.stacks[i].get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &l.scheduler;
    makecontext(&f.ctx, entry, 0);
  }
  while (l.error.empty()) {
    bool ran = false;
    for (Fiber& f : l.fibers) {
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
  Launch l;
  l.grid = grid;
  l.block = block;
  l.body = std::move(body);
  l.fibers.resize(threads);
  l.slots.assign(threads, 0.0);
  for (uint64_t i = 0; i < threads; ++i) l.stacks.emplace_back(new char[kStackBytes]);
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
