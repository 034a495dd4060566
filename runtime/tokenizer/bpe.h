// Byte-level BPE model: vocabulary, merge ranks, and the encoding of one pre-tokenised word.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace resa::tok {

class BpeModel {
 public:
  struct Options {
    // A word that is itself a vocabulary token becomes that token without merging (Llama 3).
    bool ignore_merges = false;
    // Replaces bytes whose character is not in the vocabulary; -1 drops them (as Hugging Face
    // does without an unk token).
    int32_t unk_id = -1;
  };

  // `token_to_id` maps byte-level token text to ids; `merges` are pairs of byte-level texts in
  // rank order (first = merged first). InvalidArgument, naming the merge, when a merge's parts
  // or result are not in the vocabulary. The first of duplicate merges wins.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      absl::flat_hash_map<std::string, int32_t> token_to_id,
      const std::vector<std::pair<std::string, std::string>>& merges, Options options);

  // Appends the ids of `word` (raw bytes, one pre-tokenised word) to `out`. Thread-safe; results
  // for short words are cached.
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;

  // Id of byte-level token text, or -1.
  int32_t TokenId(std::string_view text) const;
  size_t num_merges() const { return merges_.size(); }

 private:
  BpeModel() = default;
  void MergeWord(std::string_view word, std::vector<int32_t>* out) const;

  struct MergeInfo {
    int32_t rank;
    int32_t result;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  Options options_;
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  std::array<int32_t, 256> byte_id_{};  // id of each byte's single-character token, or -1

  static constexpr size_t kMaxCachedWordBytes = 64;
  static constexpr size_t kMaxCacheEntries = 1 << 17;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace resa::tok
