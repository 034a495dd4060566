#include "runtime/tokenizer/chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::tok {
namespace {

constexpr char kImStart[] = "<|im_start|>";
constexpr char kImEnd[] = "<|im_end|>";

// Resolves the escapes of a Jinja string literal body quoted with `quote`; nullopt when the
// literal ends (an unescaped quote) inside `body`, i.e. `body` is not one plain literal.
std::optional<std::string> UnescapeLiteral(std::string_view body, char quote) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == quote) return std::nullopt;
    if (c != '\\' || i + 1 == body.size()) {
      out.push_back(c);
      continue;
    }
    const char e = body[++i];
    switch (e) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(e);
        break;
      default:
        out.push_back('\\');
        out.push_back(e);
    }
  }
  return out;
}

}  // namespace

std::optional<std::string> FindDefaultSystemPrompt(std::string_view jinja) {
  const std::string marker = absl::StrCat(kImStart, "system");
  size_t pos = 0;
  while ((pos = jinja.find(marker, pos)) != std::string_view::npos) {
    const size_t at = pos;
    pos += marker.size();
    if (at == 0) continue;
    const char quote = jinja[at - 1];
    if (quote != '\'' && quote != '"') continue;
    size_t body = pos;
    if (jinja.substr(body, 1) == "\n") {
      body += 1;
    } else if (jinja.substr(body, 2) == "\\n") {
      body += 2;
    } else {
      continue;
    }
    const size_t end = jinja.find(kImEnd, body);
    if (end == std::string_view::npos) break;
    std::optional<std::string> text = UnescapeLiteral(jinja.substr(body, end - body), quote);
    if (text.has_value() && !text->empty()) return text;
  }
  return std::nullopt;
}

absl::StatusOr<ChatMlTemplate> ParseChatMlTemplate(std::string_view jinja) {
  if (jinja.empty()) return absl::FailedPreconditionError("the model has no chat template");
  if (jinja.find(kImStart) == std::string_view::npos) {
    return absl::FailedPreconditionError(
        "the chat template is not ChatML (no '<|im_start|>'); only ChatML templates are "
        "supported");
  }
  ChatMlTemplate t;
  t.default_system = FindDefaultSystemPrompt(jinja);
  return t;
}

std::string RenderChatMl(const ChatMlTemplate& tmpl, std::span<const ChatMessage> messages,
                         bool add_generation_prompt) {
  std::string out;
  auto append = [&](std::string_view role, std::string_view content) {
    absl::StrAppend(&out, kImStart, AsAbsl(role), "\n", AsAbsl(content), kImEnd, "\n");
  };
  if (tmpl.default_system.has_value() && !messages.empty() && messages[0].role != "system") {
    append("system", *tmpl.default_system);
  }
  for (const ChatMessage& m : messages) append(m.role, m.content);
  if (add_generation_prompt) absl::StrAppend(&out, kImStart, "assistant\n");
  return out;
}

}  // namespace resa::tok
