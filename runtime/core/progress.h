// A terminal progress bar for long loads: redraws in place on a TTY, prints a few lines otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace resa {

// Progress callback used by loaders: (done, total) in units the caller chooses (bytes here).
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

class ProgressBar {
 public:
  ProgressBar(std::string label, FILE* out = stderr);
  void Update(uint64_t done, uint64_t total);
  void Finish();
  ProgressFn AsCallback() {
    return [this](uint64_t d, uint64_t t) { Update(d, t); };
  }

 private:
  std::string label_;
  FILE* out_;
  bool tty_;
  int last_percent_ = -1;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace resa
