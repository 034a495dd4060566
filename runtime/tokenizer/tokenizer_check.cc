// resa_tokenizer_check MANIFEST: compares resa's tokenizer with Hugging Face reference ids.
//
// MANIFEST is the manifest.json that testdata/make_reference.py writes: {"gguf": path,
// "variants": [...]}, with <dir>/<variant>/{tokenizer.json, expected.json} beside it. For every
// variant the expected ids are checked against FromJsonFile(tokenizer.json) and against
// FromGguf(gguf) with the variant as pre-tokenizer, decoding is checked against HF's decode, and
// the two tokenizers must render the same chat prompt. Prints the first mismatch of each kind;
// exits 1 on any mismatch, 2 on a usage or load error.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/model/gguf.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa {
namespace {

using Json = nlohmann::json;

bool ReadJson(const std::filesystem::path& path, Json* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  *out = Json::parse(s.str(), nullptr, false);
  return !out->is_discarded();
}

std::string Ids(const std::vector<int32_t>& ids, size_t from, size_t count) {
  std::string out = "[";
  for (size_t i = from; i < ids.size() && i < from + count; ++i) {
    if (i > from) out += ", ";
    out += std::to_string(ids[i]);
  }
  return out + (from + count < ids.size() ? ", ...]" : "]");
}

// Compares one tokenizer with the expected cases; prints the first mismatch. Returns the number
// of mismatching cases.
int CheckCases(const Tokenizer& tok, const Json& cases, const std::string& label) {
  int bad = 0;
  for (size_t n = 0; n < cases.size(); ++n) {
    const Json& c = cases[n];
    if (!c.is_object() || !c.contains("text") || !c.contains("ids") || !c.contains("decoded") ||
        !c["text"].is_string() || !c["ids"].is_array() || !c["decoded"].is_string()) {
      std::printf("  %s: case %zu is malformed\n", label.c_str(), n);
      ++bad;
      continue;
    }
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> want = c["ids"].get<std::vector<int32_t>>();
    auto got = tok.Encode(text);
    if (!got.ok()) {
      if (bad++ == 0) {
        std::printf("  %s: case %zu %s: %s\n", label.c_str(), n, Json(text).dump().c_str(),
                    got.status().ToString().c_str());
      }
      continue;
    }
    if (*got != want) {
      if (bad++ == 0) {
        size_t i = 0;
        while (i < want.size() && i < got->size() && want[i] == (*got)[i]) ++i;
        const size_t from = i >= 3 ? i - 3 : 0;
        std::printf(
            "  %s: case %zu %s: first difference at token %zu\n    expected %s\n"
            "    got      %s\n",
            label.c_str(), n, Json(text).dump().c_str(), i, Ids(want, from, 8).c_str(),
            Ids(*got, from, 8).c_str());
        if (i < got->size()) {
          std::printf("    got token %d = %s\n", (*got)[i],
                      Json(tok.TokenBytes((*got)[i]))
                          .dump(-1, ' ', false, Json::error_handler_t::replace)
                          .c_str());
        }
      }
      continue;
    }
    const std::string decoded = tok.Decode(*got);
    if (decoded != c["decoded"].get<std::string>()) {
      if (bad++ == 0) {
        std::printf("  %s: case %zu: decode gives %s, HF gives %s\n", label.c_str(), n,
                    Json(decoded).dump(-1, ' ', false, Json::error_handler_t::replace).c_str(),
                    c["decoded"].dump().c_str());
      }
    }
  }
  std::printf("  %s: %zu cases, %d mismatches\n", label.c_str(), cases.size(), bad);
  return bad;
}

int Run(const std::filesystem::path& manifest_path) {
  Json manifest;
  if (!ReadJson(manifest_path, &manifest) || !manifest["gguf"].is_string() ||
      !manifest["variants"].is_array()) {
    std::printf("cannot read manifest %s\n", manifest_path.c_str());
    return 2;
  }
  const std::string gguf_path = manifest["gguf"].get<std::string>();
  auto file = gguf::GgufFile::Open(gguf_path);
  if (!file.ok()) {
    std::printf("%s\n", file.status().ToString().c_str());
    return 2;
  }
  const std::filesystem::path dir = manifest_path.parent_path();
  int bad = 0;
  for (const Json& v : manifest["variants"]) {
    if (!v.is_string()) return 2;
    const std::string variant = v.get<std::string>();
    std::printf("%s\n", variant.c_str());
    Json expected;
    if (!ReadJson(dir / variant / "expected.json", &expected) || !expected["cases"].is_array()) {
      std::printf("  cannot read %s\n", (dir / variant / "expected.json").c_str());
      return 2;
    }
    auto from_json = Tokenizer::FromJsonFile((dir / variant / "tokenizer.json").string());
    auto from_gguf = Tokenizer::FromGguf(**file, {.pre_tokenizer = variant});
    for (auto* t : {&from_json, &from_gguf}) {
      if (!t->ok()) {
        std::printf("  %s\n", t->status().ToString().c_str());
        return 2;
      }
    }
    bad += CheckCases(**from_json, expected["cases"], "FromJsonFile");
    bad += CheckCases(**from_gguf, expected["cases"], "FromGguf");
    const ChatMessage msgs[] = {{"user", "Hi there"}};
    auto a = (*from_json)->ApplyChatTemplate(msgs, true);
    auto b = (*from_gguf)->ApplyChatTemplate(msgs, true);
    if (a.ok() != b.ok() || (a.ok() && *a != *b) ||
        (*from_json)->StopIds() != (*from_gguf)->StopIds() ||
        (*from_json)->eos_id() != (*from_gguf)->eos_id()) {
      std::printf("  chat template / stop ids differ between tokenizer.json and GGUF\n");
      ++bad;
    }
  }
  std::printf("%s\n", bad == 0 ? "all match" : "MISMATCH");
  return bad == 0 ? 0 : 1;
}

}  // namespace
}  // namespace resa

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s manifest.json\n", argv[0]);
    return 2;
  }
  return resa::Run(argv[1]);
}
