// libFuzzer target for the tokenizer.json loader: Tokenizer::FromJsonText on arbitrary bytes must
// return a status, never crash, hang or allocate without bound; a tokenizer that loads must encode,
// decode and stream a fixed text (and the input itself when it is valid UTF-8).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"

namespace {

constexpr std::string_view kText =
    "Hello <|im_start|>user\nworld 12345 caf\xc3\xa9 e\xcc\x81 \xe4\xb8\xad\xe6\x96\x87 "
    "\xf0\x9f\xa6\x80\t  x'll IT'S<|im_end|>\n\n";

void Exercise(const resa::Tokenizer& tok, std::string_view text) {
  for (bool special : {true, false}) {
    auto ids = tok.Encode(text, {.add_bos = true, .parse_special = special});
    if (!ids.ok()) continue;
    (void)tok.Decode(*ids, /*skip_special=*/special);
    resa::StreamDecoder stream(tok);
    for (int32_t id : *ids) (void)stream.Push(id);
    (void)stream.Flush();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  auto tok = resa::Tokenizer::FromJsonText(json, "fuzz-input");
  if (!tok.ok()) return 0;
  const resa::Tokenizer& t = **tok;
  Exercise(t, kText);
  if (size <= 4096) Exercise(t, json);  // invalid UTF-8 must be an error, not a crash
  const resa::ChatMessage msgs[] = {{"user", "hi"}};
  (void)t.ApplyChatTemplate(msgs, true);
  (void)t.StopIds();
  for (int32_t id : {-1, 0, 1, t.vocab_size() - 1, t.vocab_size()}) {
    (void)t.TokenBytes(id);
    (void)t.IsSpecial(id);
  }
  return 0;
}
