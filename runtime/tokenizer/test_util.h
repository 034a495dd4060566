// Test helpers: small byte-level BPE tokenizer.json documents built in code.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/unicode.h"

namespace resa::tok::testing {

struct TinyAdded {
  std::string content;
  bool special = true;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Byte-level text of raw bytes ("a b" -> "aĠb").
inline std::string Bl(std::string_view raw) {
  std::string out;
  ByteLevelMap::Get().Encode(raw, &out);
  return out;
}

// tokenizer.json with the 256 byte tokens (id = byte value), then one token per merge (id 256 +
// merge index; merges are given as raw byte strings), then the added tokens. The pre-tokenizer
// defaults to SmolLM2's (Digits + ByteLevel).
inline nlohmann::json TinyTokenizerJson(
    const std::vector<std::pair<std::string, std::string>>& merges,
    const std::vector<TinyAdded>& added = {}, nlohmann::json pre_tokenizer = nullptr) {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    vocab[std::string(ByteLevelMap::Get().CharOf(static_cast<uint8_t>(b)))] = b;
  }
  json merge_list = json::array();
  int next = 256;
  for (const auto& [l, r] : merges) {
    const std::string joined = Bl(l + r);
    if (!vocab.contains(joined)) vocab[joined] = next++;
    merge_list.push_back(json::array({Bl(l), Bl(r)}));
  }
  json added_list = json::array();
  for (const TinyAdded& a : added) {
    added_list.push_back({{"id", next++},
                          {"content", a.content},
                          {"special", a.special},
                          {"lstrip", a.lstrip},
                          {"rstrip", a.rstrip},
                          {"single_word", a.single_word},
                          {"normalized", a.normalized}});
  }
  if (pre_tokenizer.is_null()) {
    pre_tokenizer = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Digits"}, {"individual_digits", true}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}})}};
  }
  return {{"version", "1.0"},
          {"added_tokens", added_list},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", merge_list},
            {"ignore_merges", false},
            {"byte_fallback", false}}}};
}

inline std::unique_ptr<Tokenizer> MakeTokenizer(const nlohmann::json& j) {
  auto t = Tokenizer::FromJsonText(j.dump(), "test tokenizer.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

}  // namespace resa::tok::testing
