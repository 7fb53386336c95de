// The thread split shared by the CPU library's sources (winograd_cpu.cpp, fir_cpu.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

namespace hd {

// Splits [0, n) over OpenMP threads. The library links libgomp.so.1, which resolves to the
// copy torch has already loaded, so this shares torch's thread pool; separate std::threads
// would compete with its workers, which spin for a while after each parallel region.
template <class F>
inline void parallel_for(int64_t n, int nthreads, F f) {
    const int64_t k = std::max<int64_t>(1, std::min<int64_t>(nthreads, n));
#pragma omp parallel for num_threads(k) schedule(static, 1)
    for (int64_t t = 0; t < k; ++t) f(n * t / k, n * (t + 1) / k);
}

}  // namespace hd
