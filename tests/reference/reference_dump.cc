// resa-reference-dump: runs resa on a fixed prompt and writes what the independent reference
// (llama_reference.py) checks: prompt ids, logits at every prompt position, greedy tokens.
//
// File layout (little endian): "RSAD", u32 n_prompt, u32 vocab, u32 n_generated,
// i32 ids[n_prompt], f32 logits[n_prompt][vocab], i32 generated[n_generated].
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "runtime/apps/model_loading.h"
#include "runtime/engine/cpu_model.h"
#include "runtime/engine/generate.h"

int main(int argc, char** argv) {
  CLI::App app{"Dump resa logits and greedy tokens for the reference check"};
  std::string model = "default", out, prompt =
      "The capital of France is Paris. The capital of Italy is Rome. The capital of Germany is";
  int gen_tokens = 64;
  app.add_option("--model", model)->capture_default_str();
  app.add_option("--prompt", prompt)->capture_default_str();
  app.add_option("--out", out)->required();
  app.add_option("--generate", gen_tokens)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  resa::ConfigureThreads(0);
  auto m = resa::LoadModel(model, resa::LoadOptions{.progress = false, .need_tokenizer = true});
  if (!m.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(m.status().message()).c_str());
    return 1;
  }
  auto ids = m->tokenizer->Encode(prompt);
  if (!ids.ok() || ids->empty()) {
    std::fprintf(stderr, "error: cannot encode the prompt\n");
    return 1;
  }
  const int vocab = m->weights->config.vocab_size;
  auto cache = resa::KvCache::Create(m->weights->config, 64);
  if (!cache.ok()) return 1;
  resa::CpuModel cpu(*m->weights, **cache);
  // Prompt logits at every position: one chunk (the GEMM path), logits of all rows.
  resa::SequenceKv seq;
  std::vector<float> logits(ids->size() * size_t(vocab));
  resa::ForwardChunk c{&seq, *ids, resa::LogitsMode::kAll};
  if (auto st = cpu.Forward({&c, 1}, logits.data()); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  // Greedy continuation through the product path (chunked prefill, decode steps).
  (*cache)->Release(seq);
  resa::GenerateOptions go;
  go.max_new_tokens = gen_tokens;
  go.prefill_chunk = 16;
  std::vector<int32_t> gen;
  auto stats = resa::Generate(cpu, **cache, *ids, go, [&](int32_t t) {
    gen.push_back(t);
    return true;
  });
  if (!stats.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(stats.status().message()).c_str());
    return 1;
  }
  FILE* f = std::fopen(out.c_str(), "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "error: cannot write %s\n", out.c_str());
    return 1;
  }
  const uint32_t hdr[3] = {uint32_t(ids->size()), uint32_t(vocab), uint32_t(gen.size())};
  std::fwrite("RSAD", 1, 4, f);
  std::fwrite(hdr, 4, 3, f);
  std::fwrite(ids->data(), 4, ids->size(), f);
  std::fwrite(logits.data(), 4, logits.size(), f);
  std::fwrite(gen.data(), 4, gen.size(), f);
  std::fclose(f);
  std::printf("wrote %zu prompt positions and %zu greedy tokens to %s\n", ids->size(), gen.size(),
              out.c_str());
  return 0;
}
