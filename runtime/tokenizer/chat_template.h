// ChatML chat templates without a Jinja engine: the template text is only inspected to confirm it
// is ChatML and to find its default system prompt; rendering is fixed code.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa::tok {

struct ChatMlTemplate {
  // Inserted as the first message when the conversation does not start with a system message.
  std::optional<std::string> default_system;
};

// FailedPrecondition when `jinja` is empty or is not a ChatML template (no "<|im_start|>").
absl::StatusOr<ChatMlTemplate> ParseChatMlTemplate(std::string_view jinja);

// The default system prompt: the text of a Jinja string literal
// '<|im_start|>system\n...<|im_end|>' (newline literal or escaped) whose body is plain text,
// with Jinja escapes resolved. nullopt when the template has none.
std::optional<std::string> FindDefaultSystemPrompt(std::string_view jinja);

// "<|im_start|>{role}\n{content}<|im_end|>\n" per message (after the default system prompt, when
// there is one and messages[0] is not a system message), then "<|im_start|>assistant\n" when
// add_generation_prompt.
std::string RenderChatMl(const ChatMlTemplate& tmpl, std::span<const ChatMessage> messages,
                         bool add_generation_prompt);

}  // namespace resa::tok
