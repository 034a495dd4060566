// Added tokens (special and user-defined): found in the text before pre-tokenisation and
// emitted as one id each, the way Hugging Face's AddedVocabulary does it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace resa::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // control token: skipped by Decode(skip_special), parse_special
  bool lstrip = false;       // swallows the whitespace before it
  bool rstrip = false;       // swallows the whitespace after it
  bool single_word = false;  // only matches when not inside a word
  bool normalized = false;   // matched in the normalised text rather than the raw text
};

// Leftmost-longest matcher over a set of added tokens (non-overlapping, left to right).
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // Tokens with empty content are ignored; `tokens` must outlive the matcher.
  explicit AddedTokenMatcher(std::vector<const AddedToken*> tokens);

  bool empty() const { return tokens_.empty(); }

  // A piece of the text: an added token (token != nullptr) or plain text to tokenise.
  struct Piece {
    std::string_view text;
    const AddedToken* token = nullptr;
  };
  // Splits `text` (valid UTF-8) into plain pieces and added tokens; the pieces cover `text` in
  // order (except whitespace swallowed by lstrip/rstrip, which belongs to the token's piece)
  // and empty plain pieces are left out. Special tokens are not matched when !parse_special
  // (their text stays plain, and no shorter token is looked for inside it).
  void Split(std::string_view text, bool parse_special, std::vector<Piece>* out) const;

 private:
  // Longest token that starts at text[pos], or nullptr.
  const AddedToken* LongestAt(std::string_view text, size_t pos) const;

  std::vector<const AddedToken*> tokens_;
  // For each first byte, indices into tokens_ by decreasing content length.
  std::array<std::vector<uint32_t>, 256> by_first_byte_;
};

}  // namespace resa::tok
