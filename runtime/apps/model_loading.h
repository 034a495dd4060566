// Turning a --model argument into a loaded model: path resolution (the "default" model lives in
// the user's model cache), weights, tokenizer, with a progress bar. Shared by the programs.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/engine/cpu_weights.h"
#include "runtime/model/model_cache.h"  // ModelCacheDir, the default model's file
#include "runtime/model/weight_source.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {

// Known model names and the files scripts/ fetch them to.
struct ModelAlias {
  const char* name;
  const char* file;        // inside the model cache
  const char* fetch_hint;  // command that fetches it
};
const ModelAlias* FindModelAlias(const std::string& name);

// "default" or another alias -> its cached file (NotFound with the fetch command when absent);
// anything else is taken as a path and must exist.
absl::StatusOr<std::string> ResolveModelPath(const std::string& spec);

struct LoadedModel {
  std::string path;
  std::unique_ptr<WeightSource> source;
  std::unique_ptr<CpuWeights> weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null for synthetic models
};

struct LoadOptions {
  bool progress = true;        // progress bar on stderr
  bool need_tokenizer = true;
};

// The tokenizer of a GGUF file (its metadata) or of a Hugging Face directory (tokenizer.json).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const WeightSource& source);

// Loads `spec` (alias, GGUF file, HF directory, or "synthetic:<shape>").
absl::StatusOr<LoadedModel> LoadModel(const std::string& spec, const LoadOptions& options);

// Applies --threads to OpenMP and OpenBLAS; 0 = all cores. Returns the count in use.
int ConfigureThreads(int threads);

}  // namespace resa
