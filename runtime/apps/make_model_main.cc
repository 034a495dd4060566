// `resa-make-model`: writes a random-weight Hugging Face model directory with the exact shapes
// of a real model (runtime/apps/make_model.h). Exit codes: 0 written, 1 the write failed
// (disk, permissions), 2 bad arguments (flags, unknown shape, --out not empty without --force).
#include <chrono>
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "runtime/apps/make_model.h"
#include "runtime/apps/process_setup.h"
#include "runtime/engine/synthetic_model.h"

namespace {

int ExitCodeFor(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kAlreadyExists:
      return 2;
    default:
      return 1;
  }
}

void ListShapes() {
  for (const std::string& name : resa::MakeModelShapes()) {
    absl::StatusOr<resa::ModelConfig> c = resa::MakeModelConfig(name);
    if (!c.ok()) continue;
    std::printf("%-22s %-5s %2d layers, hidden %5d, heads %2d/%d, intermediate %5d, vocab %6d\n",
                name.c_str(), c->arch_name.c_str(), c->num_layers, c->hidden_size, c->num_heads,
                c->num_kv_heads, c->intermediate_size, c->vocab_size);
  }
}

}  // namespace

int main(int argc, char** argv) {
  resa::DefaultOpenMpWaitPolicy(argv);
  CLI::App app{
      "resa-make-model: write a random-weight model with the exact shapes of a real one as a "
      "Hugging Face directory (config.json, safetensors, tokenizer.json), for speed runs at full "
      "size without downloading weights"};
  resa::MakeModelOptions o;
  bool list = false;
  bool quiet = false;
  app.add_flag("--list-shapes", list, "Print the known shapes and exit");
  app.add_option("--shape", o.shape,
                 "Model shape: " + absl::StrJoin(resa::MakeModelShapes(), ", "));
  app.add_option("-o,--out", o.out_dir, "Directory to write (must not exist or be empty)");
  app.add_option("--dtype", o.dtype, "Weight dtype")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  app.add_option("--seed", o.seed, "Weight seed (1 = the weights of --model synthetic:<shape>)")
      ->capture_default_str();
  app.add_option("--shard-gb", o.shard_gb,
                 "Split into model-0000i-of-0000N.safetensors shards of at most this many GB")
      ->capture_default_str();  // > 0, checked by MakeModel with a plainer message
  app.add_flag("--force", o.force, "Replace --out even if it is not empty");
  app.add_option("--tokenizer-from", o.tokenizer_from,
                 "Copy this tokenizer.json (and tokenizer_config.json beside it) instead of "
                 "generating a byte-level BPE tokenizer of the model's vocabulary size");
  app.add_flag("-q,--quiet", quiet, "No progress bar or summary");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (list) {
    ListShapes();
    return 0;
  }
  if (o.shape.empty() || o.out_dir.empty()) {
    std::fprintf(stderr, "error: --shape and --out are required (known shapes: %s)\n",
                 absl::StrJoin(resa::MakeModelShapes(), ", ").c_str());
    return 2;
  }
  o.progress = !quiet;
  const auto start = std::chrono::steady_clock::now();
  if (absl::Status st = resa::MakeModel(o); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return ExitCodeFor(st);
  }
  if (!quiet) {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "wrote %s (%s, %s) in %.1fs; try: resa generate -m %s -p hello -n 16\n",
                 o.out_dir.c_str(), o.shape.c_str(), o.dtype.c_str(), s, o.out_dir.c_str());
  }
  return 0;
}
