#include "runtime/tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "runtime/tokenizer/unicode.h"

namespace resa::tok {

AddedTokenMatcher::AddedTokenMatcher(std::vector<const AddedToken*> tokens) {
  for (const AddedToken* t : tokens) {
    if (!t->content.empty()) tokens_.push_back(t);
  }
  for (uint32_t i = 0; i < tokens_.size(); ++i) {
    by_first_byte_[static_cast<uint8_t>(tokens_[i]->content[0])].push_back(i);
  }
  for (auto& list : by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](uint32_t a, uint32_t b) {
      return tokens_[a]->content.size() > tokens_[b]->content.size();
    });
  }
}

const AddedToken* AddedTokenMatcher::LongestAt(std::string_view text, size_t pos) const {
  const auto& cands = by_first_byte_[static_cast<uint8_t>(text[pos])];
  const size_t left = text.size() - pos;
  for (uint32_t i : cands) {
    const std::string& c = tokens_[i]->content;
    if (c.size() <= left && std::memcmp(text.data() + pos, c.data(), c.size()) == 0) {
      return tokens_[i];
    }
  }
  return nullptr;
}

void AddedTokenMatcher::Split(std::string_view text, bool parse_special,
                              std::vector<Piece>* out) const {
  size_t emitted = 0;  // end of the last piece pushed
  size_t pos = 0;      // where the next match may start
  while (pos < text.size()) {
    if (by_first_byte_[static_cast<uint8_t>(text[pos])].empty()) {
      ++pos;
      continue;
    }
    const AddedToken* tok = LongestAt(text, pos);
    if (tok == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + tok->content.size();
    pos = stop;  // matches never overlap, even when rejected below
    if (tok->special && !parse_special) continue;
    if (tok->single_word) {
      size_t len = 0;
      const bool word_before = start > 0 && IsWordChar(DecodeUtf8Before(text, start, &len));
      const bool word_after = stop < text.size() && IsWordChar(DecodeUtf8At(text, stop, &len));
      if (word_before || word_after) continue;
    }
    if (tok->lstrip) {
      size_t s = start;
      while (s > emitted) {
        size_t len = 0;
        if (!IsWhiteSpace(DecodeUtf8Before(text, s, &len))) break;
        s -= len;
      }
      start = s;
    }
    if (tok->rstrip) {
      while (stop < text.size()) {
        size_t len = 0;
        if (!IsWhiteSpace(DecodeUtf8At(text, stop, &len))) break;
        stop += len;
      }
      pos = stop;
    }
    if (start > emitted) out->push_back(Piece{text.substr(emitted, start - emitted), nullptr});
    out->push_back(Piece{text.substr(start, stop - start), tok});
    emitted = stop;
  }
  if (emitted < text.size()) out->push_back(Piece{text.substr(emitted), nullptr});
}

}  // namespace resa::tok
