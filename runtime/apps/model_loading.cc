#include "runtime/apps/model_loading.h"

#include <cblas.h>
#include <omp.h>

#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/progress.h"
#include "runtime/core/status.h"
#include "runtime/engine/synthetic_model.h"
#include "runtime/model/gguf.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace resa {

namespace {
constexpr ModelAlias kAliases[] = {
    {"default", kDefaultModelFile, "./scripts/fetch_model.sh"},
    {"smollm2-135m", kDefaultModelFile, "./scripts/fetch_model.sh"},
    {"qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
     "./scripts/fetch_qwen_coder.sh"},
};
}  // namespace

const ModelAlias* FindModelAlias(const std::string& name) {
  for (const ModelAlias& a : kAliases) {
    if (name == a.name) return &a;
  }
  return nullptr;
}

absl::StatusOr<std::string> ResolveModelPath(const std::string& spec) {
  if (spec.empty()) return absl::InvalidArgumentError("--model is empty");
  if (const ModelAlias* a = FindModelAlias(spec)) {
    std::string path = ModelCacheDir() + "/" + a->file;
    if (!std::filesystem::exists(path)) {
      return absl::NotFoundError(absl::StrCat("model '", spec, "' is not in the cache (", path,
                                              "); fetch it with ", a->fetch_hint));
    }
    return path;
  }
  std::error_code ec;
  if (!std::filesystem::exists(spec, ec)) {
    return absl::NotFoundError(absl::StrCat("--model ", spec,
                                            ": no such file or directory (expected a .gguf file, "
                                            "a Hugging Face model directory, or 'default')"));
  }
  return spec;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const WeightSource& source) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok;
  if (source.gguf() != nullptr) {
    tok = Tokenizer::FromGguf(*source.gguf());
  } else if (!source.hf_dir().empty()) {
    tok = Tokenizer::FromJsonFile(source.hf_dir() + "/tokenizer.json");
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        source.path(), " has no tokenizer (synthetic models take token ids only)"));
  }
  if (!tok.ok()) return Annotate(tok.status(), source.path());
  return tok;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& spec, const LoadOptions& options) {
  LoadedModel m;
  if (absl::StartsWith(spec, "synthetic:")) {
    RESA_ASSIGN_OR_RETURN(ModelConfig cfg, SyntheticConfig(spec.substr(10)));
    m.path = spec;
    m.source = MakeSyntheticWeights(cfg, 1);
  } else {
    RESA_ASSIGN_OR_RETURN(m.path, ResolveModelPath(spec));
    RESA_ASSIGN_OR_RETURN(m.source, OpenWeightSource(m.path));
  }
  {
    ProgressBar bar("loading " + std::filesystem::path(m.path).filename().string());
    ProgressFn fn;
    if (options.progress) fn = bar.AsCallback();
    RESA_ASSIGN_OR_RETURN(m.weights, LoadCpuWeights(*m.source, fn));
    if (options.progress) bar.Finish();
  }
  if (options.need_tokenizer) {
    RESA_ASSIGN_OR_RETURN(m.tokenizer, LoadTokenizer(*m.source));
  }
  return m;
}

int ConfigureThreads(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  return threads;
}

}  // namespace resa
