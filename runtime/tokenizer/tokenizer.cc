// StreamDecoder; the factories live in gguf_loader.cc and json_loader.cc.
#include "runtime/tokenizer/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

#include "runtime/tokenizer/unicode.h"

namespace resa {

std::string StreamDecoder::Push(int32_t id) {
  if (skip_special_ && tok_.IsSpecial(id)) return std::string();
  pending_ += tok_.TokenBytes(id);
  const size_t n = tok::CompleteUtf8Prefix(pending_);
  std::string out = pending_.substr(0, n);
  pending_.erase(0, n);
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tok,
                                                std::span<const ChatMessage> messages,
                                                bool add_generation_prompt) {
  // Render around placeholders no content contains, then encode piece by piece.
  std::string marker;
  for (int nonce = 0;; ++nonce) {
    marker = absl::StrCat("\x1e" "chat-", nonce, "-");
    bool clash = false;
    for (const ChatMessage& m : messages) clash |= m.content.find(marker) != std::string::npos;
    if (!clash) break;
  }
  std::vector<ChatMessage> placeholders;
  for (size_t i = 0; i < messages.size(); ++i) {
    placeholders.push_back({messages[i].role, absl::StrCat(marker, i, marker)});
  }
  RESA_ASSIGN_OR_RETURN(std::string rendered,
                        tok.ApplyChatTemplate(placeholders, add_generation_prompt));
  std::vector<int32_t> ids;
  auto append = [&](std::string_view text, bool special) -> absl::Status {
    if (text.empty()) return absl::OkStatus();
    RESA_ASSIGN_OR_RETURN(auto part,
                          tok.Encode(text, EncodeOptions{.add_bos = false, .parse_special = special}));
    ids.insert(ids.end(), part.begin(), part.end());
    return absl::OkStatus();
  };
  std::string_view rest = rendered;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string slot = absl::StrCat(marker, i, marker);
    const size_t at = rest.find(slot);
    if (at == std::string_view::npos) {
      return absl::InternalError(absl::StrCat("the chat template dropped message ", i));
    }
    RESA_RETURN_IF_ERROR(append(rest.substr(0, at), true));
    absl::Status st = append(messages[i].content, false);
    if (!st.ok()) return Annotate(st, absl::StrCat("message ", i, " (", messages[i].role, ")"));
    rest.remove_prefix(at + slot.size());
  }
  RESA_RETURN_IF_ERROR(append(rest, true));
  return ids;
}

}  // namespace resa
