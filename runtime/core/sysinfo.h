// Process and machine figures for stats lines: peak resident memory, wall clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace resa {

// Peak resident set size of this process in bytes (getrusage).
uint64_t PeakRssBytes();

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void Reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace resa
