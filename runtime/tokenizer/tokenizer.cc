// StreamDecoder; the factories live in gguf_loader.cc and json_loader.cc.
#include "runtime/tokenizer/tokenizer.h"

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

}  // namespace resa
