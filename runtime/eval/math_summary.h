// The paper-style table of a math-evaluation output directory (resa-spec.md §7.1): accuracy per
// dataset and their average, per mode, with the average generated length and blocks read.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace resa {

struct MathCell {
  int n = 0;                   // records
  int correct = 0;
  double generated_tokens = 0; // summed
  int64_t blocks_read = 0;
  int64_t blocks_total = 0;
  int truncated = 0;           // finish_reason "length": the budget cut the generation

  double accuracy() const { return n > 0 ? 100.0 * correct / n : 0.0; }
  double mean_length() const { return n > 0 ? generated_tokens / n : 0.0; }
  double blocks_read_percent() const {
    return blocks_total > 0 ? 100.0 * double(blocks_read) / double(blocks_total) : 100.0;
  }
};

// One mode against dense on the items (dataset, index, sample) both have: a paired comparison,
// far less noisy than the accuracy difference on few problems. Under greedy decoding every
// difference comes from the attention approximation.
struct MathAgreement {
  int n = 0;                   // items both modes have
  int same_answer = 0;         // extracted answers equal (as text or mathematically)
  int same_output = 0;         // identical generated text
  int correct_only_here = 0;   // this mode right, dense wrong
  int correct_only_dense = 0;  // dense right, this mode wrong

  void Add(const MathAgreement& o) {
    n += o.n;
    same_answer += o.same_answer;
    same_output += o.same_output;
    correct_only_here += o.correct_only_here;
    correct_only_dense += o.correct_only_dense;
  }
};

struct MathSummary {
  std::vector<std::string> datasets;  // columns: the paper's order, then others by name
  std::vector<std::string> modes;     // rows: dense, sparse, resa, then others
  // cells[m][d]; n == 0 where a mode has no file for a dataset.
  std::vector<std::vector<MathCell>> cells;
  // agreement[m][d]: mode m against the "dense" mode; empty when there is no dense mode.
  std::vector<std::vector<MathAgreement>> agreement;

  const MathCell& cell(size_t mode, size_t dataset) const { return cells[mode][dataset]; }
};

struct SummaryOptions {
  // Re-extract and re-grade every record's output with this build's grader instead of trusting
  // its stored "correct" (after a grader fix).
  bool regrade = false;
  // Count only items (dataset, index, sample) that every mode has, so the modes are compared on
  // the same problems (a run stopped early may have finished a few more in one mode).
  bool paired = false;
};

// Reads every <dataset>.<mode>.jsonl in `dir`. NotFound when there is none; a bad record is an
// error naming the file and line.
absl::StatusOr<MathSummary> SummarizeMathDir(const std::string& dir,
                                             const SummaryOptions& options = {});

// Rows per mode: accuracy per dataset and Avg (the unweighted mean of the dataset accuracies, as
// the paper), then the average generated length, blocks read and budget-truncated generations;
// then, when a dense mode is present, each other mode's agreement with dense over all datasets.
std::string SummaryMarkdown(const MathSummary& summary);
// One line per (mode, dataset) plus an "avg" line per mode:
// mode,dataset,n,correct,accuracy,avg_generated_tokens,blocks_read_percent,truncated
std::string SummaryCsv(const MathSummary& summary);

}  // namespace resa
