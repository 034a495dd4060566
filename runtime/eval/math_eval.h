// The math evaluation run: problems x samples x modes -> generations (through a MathGenerator)
// -> extracted, graded records, one JSONL file per dataset and mode, resumable.
//
// Output directory layout:
//   run.json                    settings of the run (a resumed run must match them)
//   <dataset>.<mode>.jsonl      one record per (problem, sample), in completion order
// A record: dataset, mode, index, id, sample, seed, prompt, output, pred, gold, gold_raw, correct,
// prompt_tokens, generated_tokens, finish_reason, seconds, report {decode_steps, sparse_steps,
// blocks_read, blocks_total, rectifications, rectified_tokens}.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/decoder.h"
#include "runtime/eval/math_data.h"
#include "runtime/eval/math_generator.h"

namespace resa {

struct MathEvalOptions {
  std::string data_dir;
  std::vector<std::string> datasets;
  std::vector<int> dataset_limits;  // per dataset (parallel to datasets), 0 = `limit`; may be empty
  std::vector<DecodeMode> modes;
  int limit = 0;          // problems per dataset, 0 = all
  int samples = 1;        // generations per problem (seeds differ)
  int max_new_tokens = 16384;
  PromptTemplate prompt = PromptTemplate::kR1;
  float temperature = 0.6f;
  float top_p = 0.9f;
  int top_k = 0;
  uint64_t seed = 0;      // sample s of problem i uses seed + i * samples + s, in every mode
  float sparse_ratio = 0.1f;
  int min_blocks = 16;
  int rectify_every = 32;
  std::string out_dir;
  std::string model;      // recorded in run.json
  bool progress = true;   // progress line with ETA on stderr
  // Stop after this many generations were written (0 = no limit): simulates an interruption.
  int stop_after = 0;
};

// Settings that must agree between a run and its resumption, as written to run.json.
nlohmann::json RunSettingsJson(const MathEvalOptions& options);

// (index, sample) pairs already in a JSONL file. A torn last line (no '\n', an interrupted write)
// is cut off the file; any other unparsable line is an error naming the file and line.
absl::StatusOr<std::set<std::pair<int, int>>> LoadFinished(const std::string& path);

struct MathEvalStats {
  int skipped = 0;    // already in the output (resume)
  int generated = 0;  // written by this run
};

// Runs the evaluation, appending to the output files; items already present are not redone.
// Work is ordered round-robin over datasets by problem rank (rank 0 of every dataset, then rank 1,
// ...), every sample and mode of a problem together, so a run stopped early covers all datasets
// and modes evenly.
// A run.json whose settings differ (other than datasets, modes and limit) is FailedPrecondition.
absl::StatusOr<MathEvalStats> RunMathEval(const MathEvalOptions& options,
                                          MathGenerator& generator);

}  // namespace resa
