#include "runtime/core/progress.h"

#include <unistd.h>

namespace resa {

ProgressBar::ProgressBar(std::string label, FILE* out)
    : label_(std::move(label)),
      out_(out),
      tty_(::isatty(::fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (finished_ || total == 0) return;
  int percent = static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total));
  if (percent > 100) percent = 100;
  auto now = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(now - start_).count();
  if (tty_) {
    bool due = now - last_draw_ > std::chrono::milliseconds(100) || percent == 100;
    if (percent == last_percent_ || !due) return;
    constexpr int kWidth = 30;
    int filled = percent * kWidth / 100;
    std::string bar(filled, '=');
    if (filled < kWidth) bar += '>';
    bar.resize(kWidth, ' ');
    std::fprintf(out_, "\r%s [%s] %3d%% %.1f/%.1f MB %.1fs", label_.c_str(), bar.c_str(), percent,
                 done / 1e6, total / 1e6, elapsed);
    std::fflush(out_);
  } else {
    // Non-interactive: one line per quarter so logs stay short.
    if (percent / 25 == last_percent_ / 25 && last_percent_ >= 0) return;
    std::fprintf(out_, "%s %d%% (%.1f/%.1f MB, %.1fs)\n", label_.c_str(), percent, done / 1e6,
                 total / 1e6, elapsed);
  }
  last_percent_ = percent;
  last_draw_ = now;
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    std::fprintf(out_, "\r%s done in %.1fs%40s\n", label_.c_str(), elapsed, "");
  }
  std::fflush(out_);
}

}  // namespace resa
