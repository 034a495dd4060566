#include "runtime/tokenizer/bpe.h"

#include <queue>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/tokenizer/unicode.h"

namespace resa::tok {

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    absl::flat_hash_map<std::string, int32_t> token_to_id,
    const std::vector<std::pair<std::string, std::string>>& merges, Options options) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->options_ = options;
  m->token_to_id_ = std::move(token_to_id);
  const ByteLevelMap& bytes = ByteLevelMap::Get();
  for (int b = 0; b < 256; ++b) {
    m->byte_id_[b] = m->TokenId(bytes.CharOf(static_cast<uint8_t>(b)));
  }
  m->merges_.reserve(merges.size());
  std::string joined;
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [left, right] = merges[i];
    const int32_t a = m->TokenId(left);
    const int32_t b = m->TokenId(right);
    joined.assign(left).append(right);
    const int32_t r = m->TokenId(joined);
    if (a < 0 || b < 0 || r < 0) {
      const std::string& missing = a < 0 ? left : b < 0 ? right : joined;
      return absl::InvalidArgumentError(absl::StrCat(
          "merge ", i, " ('", left, "' '", right, "'): '", missing, "' is not in the vocabulary"));
    }
    m->merges_.try_emplace(PairKey(a, b), MergeInfo{static_cast<int32_t>(i), r});
  }
  return m;
}

int32_t BpeModel::TokenId(std::string_view text) const {
  auto it = token_to_id_.find(AsAbsl(text));
  return it == token_to_id_.end() ? -1 : it->second;
}

void BpeModel::EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(AsAbsl(word));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out->size();
  if (options_.ignore_merges) {
    std::string text;
    ByteLevelMap::Get().Encode(word, &text);
    const int32_t id = TokenId(text);
    if (id >= 0) {
      out->push_back(id);
    } else {
      MergeWord(word, out);
    }
  } else {
    MergeWord(word, out);
  }
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.try_emplace(std::string(word), out->begin() + static_cast<std::ptrdiff_t>(first),
                       out->end());
  }
}

// Merges the lowest-ranked adjacent pair first (leftmost among equal ranks) until none is left,
// over a linked list of symbols with a heap of candidate pairs: O(n log n) in the word length.
// Heap entries made stale by an earlier merge are recognised and dropped when popped.
void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index; symbols keep their index when they absorb their right side
    int32_t left_id;
    int32_t right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  for (char ch : word) {
    int32_t id = byte_id_[static_cast<uint8_t>(ch)];
    if (id < 0) {
      if (options_.unk_id < 0) continue;
      id = options_.unk_id;
    }
    const auto idx = static_cast<int32_t>(syms.size());
    syms.push_back(Symbol{id, idx - 1, idx + 1});
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = syms[left].next;
    if (right < 0) return;
    auto it = merges_.find(PairKey(syms[left].id, syms[right].id));
    if (it != merges_.end()) {
      heap.push(Candidate{it->second.rank, left, syms[left].id, syms[right].id});
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);

  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = syms[c.left];
    if (left.id != c.left_id || left.next < 0) continue;  // absorbed, changed or at the end
    Symbol& right = syms[left.next];
    if (right.id != c.right_id) continue;
    left.id = merges_.find(PairKey(c.left_id, c.right_id))->second.result;
    right.id = -1;  // dead
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out->push_back(syms[i].id);
}

}  // namespace resa::tok
