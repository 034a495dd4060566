#include "runtime/tokenizer/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace resa::tok {
namespace {

using ::testing::HasSubstr;

// SmolLM2-135M-Instruct's tokenizer.chat_template (newlines inside the string literals).
constexpr std::string_view kSmolLm2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

// The shape of Qwen2.5-Instruct's template (escaped \n; the default prompt appears first in a
// tools branch where it is not one literal).
constexpr std::string_view kQwen25 = R"({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "<|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %})";

TEST(ChatTemplate, SmolLm2DefaultSystemPrompt) {
  auto t = ParseChatMlTemplate(kSmolLm2);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(t->default_system.has_value());
  EXPECT_EQ(*t->default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  const std::vector<ChatMessage> msgs = {{"user", "What is 2+2?"}};
  EXPECT_EQ(RenderChatMl(*t, msgs, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, QwenStyleEscapedTemplate) {
  auto t = ParseChatMlTemplate(kQwen25);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(t->default_system.has_value());
  EXPECT_EQ(*t->default_system,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  const std::vector<ChatMessage> msgs = {{"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
  EXPECT_EQ(RenderChatMl(*t, msgs, false),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello"
            "<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n");
}

TEST(ChatTemplate, ExplicitSystemMessageReplacesTheDefault) {
  auto t = ParseChatMlTemplate(kSmolLm2);
  ASSERT_TRUE(t.ok());
  const std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "hi"}};
  EXPECT_EQ(RenderChatMl(*t, msgs, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderChatMl(*t, {}, true), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, WithoutDefaultPrompt) {
  auto t = ParseChatMlTemplate(
      "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
      "'<|im_end|>\\n'}}{% endfor %}");
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->default_system.has_value());
  const std::vector<ChatMessage> msgs = {{"user", "hi"}};
  EXPECT_EQ(RenderChatMl(*t, msgs, false), "<|im_start|>user\nhi<|im_end|>\n");
}

TEST(ChatTemplate, JinjaEscapesInTheDefaultPrompt) {
  EXPECT_EQ(
      FindDefaultSystemPrompt(R"({{ "<|im_start|>system\nSay \"hi\"\tplease<|im_end|>\n" }})"),
      "Say \"hi\"\tplease");
  EXPECT_EQ(FindDefaultSystemPrompt(R"({{ '<|im_start|>system\nIt\'s me<|im_end|>' }})"),
            "It's me");
  EXPECT_FALSE(FindDefaultSystemPrompt("'<|im_start|>system\n' + x + '<|im_end|>'").has_value());
  EXPECT_FALSE(FindDefaultSystemPrompt("<|im_start|>system\nno quote<|im_end|>").has_value());
}

TEST(ChatTemplate, NonChatMlIsFailedPrecondition) {
  auto t = ParseChatMlTemplate("{{ bos_token }}[INST] {{ m }} [/INST]");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(t.status().message(), HasSubstr("not ChatML"));
  EXPECT_EQ(ParseChatMlTemplate("").status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace resa::tok
