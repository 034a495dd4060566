#include "runtime/apps/bench_util.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "runtime/core/sysinfo.h"

namespace resa {

MemoryCeiling MeasureMemoryCeiling(uint64_t bytes, int repeats) {
  const size_t n = bytes / sizeof(float);
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    a[i] = float(i & 1023);
    b[i] = 0.0f;
  }
  MemoryCeiling m;
  double best_copy = 1e30, best_read = 1e30;
  volatile float sink = 0.0f;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch sw;
#pragma omp parallel
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
      std::memcpy(b.get() + lo, a.get() + lo, (hi - lo) * sizeof(float));
    }
    best_copy = std::min(best_copy, sw.Seconds());
    sw.Reset();
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const size_t lo = n * t / nt, hi = n * (t + 1) / nt;
      const float* p = b.get();
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (size_t i = lo; i < hi; ++i) part += p[i];
      total += part;
    }
    best_read = std::min(best_read, sw.Seconds());
    sink = sink + total;
  }
  m.copy_gbps = 2.0 * double(bytes) / best_copy / 1e9;
  m.read_gbps = double(bytes) / best_read / 1e9;
  return m;
}

}  // namespace resa
