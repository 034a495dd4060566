#include "runtime/serving/request.h"

#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/hash.h"
#include "runtime/core/status.h"
#include "runtime/tokenizer/unicode.h"

namespace resa::serving {

namespace {

absl::Status Invalid(std::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(AsAbsl(field), ": ", what));
}

// Chat messages: roles checked, contents encoded as plain text (EncodeChat).
absl::StatusOr<std::vector<int32_t>> EncodeMessages(const v1::GenerateRequest& req,
                                                    const Tokenizer& tok) {
  std::vector<ChatMessage> msgs;
  for (int i = 0; i < req.messages_size(); ++i) {
    const v1::ChatMessage& m = req.messages(i);
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant") {
      return Invalid(absl::StrCat("messages[", i, "].role"),
                     absl::StrCat("must be system, user or assistant, got '",
                                  absl::CHexEscape(m.role().substr(0, 32)), "'"));
    }
    msgs.push_back(ChatMessage{m.role(), m.content()});
  }
  auto ids = EncodeChat(tok, msgs, /*add_generation_prompt=*/true);
  if (!ids.ok()) return Invalid("messages", ids.status().message());
  return ids;
}

absl::Status CheckSampling(const v1::SamplingSettings& s) {
  if (!std::isfinite(s.temperature()) || s.temperature() < 0.0f) {
    return Invalid("sampling.temperature", absl::StrCat("must be >= 0, got ", s.temperature()));
  }
  if (s.top_k() < 0) return Invalid("sampling.top_k", absl::StrCat("must be >= 0, got ", s.top_k()));
  if (s.has_top_p() && !(s.top_p() > 0.0f && s.top_p() <= 1.0f)) {
    return Invalid("sampling.top_p", absl::StrCat("must be in (0, 1], got ", s.top_p()));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::ResaSettings> ResolveResa(const v1::ResaSettings& r, const ResaOptions& d) {
  v1::ResaSettings out;
  if (!v1::DecodeMode_IsValid(r.mode())) {
    return Invalid("resa.mode", absl::StrCat("unknown mode ", int(r.mode())));
  }
  out.set_mode(r.mode() == v1::DECODE_MODE_UNSPECIFIED ? ToSettings(d).mode() : r.mode());
  if (r.has_sparse_ratio() && !(r.sparse_ratio() > 0.0f && r.sparse_ratio() <= 1.0f)) {
    return Invalid("resa.sparse_ratio", absl::StrCat("must be in (0, 1], got ", r.sparse_ratio()));
  }
  if (r.has_min_blocks() && r.min_blocks() < 1) {
    return Invalid("resa.min_blocks", absl::StrCat("must be >= 1, got ", r.min_blocks()));
  }
  if (r.has_rectify_every() && (r.rectify_every() < 1 || r.rectify_every() > 4096)) {
    return Invalid("resa.rectify_every",
                   absl::StrCat("must be in [1, 4096], got ", r.rectify_every()));
  }
  out.set_sparse_ratio(r.has_sparse_ratio() ? r.sparse_ratio() : d.sparse_ratio);
  out.set_min_blocks(r.has_min_blocks() ? r.min_blocks() : d.min_blocks);
  out.set_rectify_every(r.has_rectify_every() ? r.rectify_every() : d.rectify_every);
  return out;
}

}  // namespace

v1::ResaSettings ToSettings(const ResaOptions& o) {
  v1::ResaSettings s;
  switch (o.mode) {
    case DecodeMode::kDense:
      s.set_mode(v1::DECODE_MODE_DENSE);
      break;
    case DecodeMode::kSparse:
      s.set_mode(v1::DECODE_MODE_SPARSE);
      break;
    case DecodeMode::kResa:
      s.set_mode(v1::DECODE_MODE_RESA);
      break;
  }
  s.set_sparse_ratio(o.sparse_ratio);
  s.set_min_blocks(o.min_blocks);
  s.set_rectify_every(o.rectify_every);
  return s;
}

absl::StatusOr<ResolvedRequest> ResolveRequest(const v1::GenerateRequest& req,
                                               const Tokenizer& tok, const RequestLimits& lim) {
  ResolvedRequest out;
  const int inputs = int(!req.prompt().empty()) + int(req.messages_size() > 0) +
                     int(req.prompt_tokens_size() > 0);
  if (inputs == 0) {
    return absl::InvalidArgumentError("the prompt is empty: set prompt, messages or prompt_tokens");
  }
  if (inputs > 1) {
    return absl::InvalidArgumentError("set only one of prompt, messages and prompt_tokens");
  }
  int64_t bytes = int64_t(req.prompt().size());
  for (const v1::ChatMessage& m : req.messages()) bytes += int64_t(m.content().size());
  if (bytes > lim.max_prompt_bytes) {
    return Invalid("prompt", absl::StrCat(bytes, " bytes, the limit is ", lim.max_prompt_bytes,
                                          " (--max-prompt-bytes)"));
  }
  if (!req.prompt().empty()) {
    auto ids = tok.Encode(req.prompt(), EncodeOptions{.add_bos = tok.add_bos_token(),
                                                       .parse_special = false});
    if (!ids.ok()) return Invalid("prompt", ids.status().message());
    out.prompt = std::move(*ids);
  } else if (req.messages_size() > 0) {
    RESA_ASSIGN_OR_RETURN(out.prompt, EncodeMessages(req, tok));
  } else {
    for (int i = 0; i < req.prompt_tokens_size(); ++i) {
      const int32_t t = req.prompt_tokens(i);
      if (t < 0 || t >= tok.vocab_size()) {
        return Invalid(absl::StrCat("prompt_tokens[", i, "]"),
                       absl::StrCat(t, " is outside the vocabulary [0, ", tok.vocab_size(), ")"));
      }
    }
    out.prompt.assign(req.prompt_tokens().begin(), req.prompt_tokens().end());
  }
  if (out.prompt.empty()) {
    return absl::InvalidArgumentError("the prompt is empty after encoding");
  }

  const int32_t max_tokens = req.has_max_tokens() ? req.max_tokens() : lim.default_max_tokens;
  if (max_tokens < 1) return Invalid("max_tokens", absl::StrCat("must be >= 1, got ", max_tokens));
  if (int64_t(out.prompt.size()) >= lim.max_context) {
    return Invalid("prompt", absl::StrCat(out.prompt.size(), " tokens do not fit the context of ",
                                          lim.max_context, " tokens"));
  }
  if (int64_t(out.prompt.size()) + max_tokens > lim.max_context) {
    return Invalid("max_tokens",
                   absl::StrCat("prompt (", out.prompt.size(), " tokens) + max_tokens (",
                                max_tokens, ") exceed the context of ", lim.max_context,
                                " tokens; at most ", lim.max_context - int64_t(out.prompt.size()),
                                " tokens can be generated"));
  }
  RESA_RETURN_IF_ERROR(CheckSampling(req.sampling()));
  RESA_ASSIGN_OR_RETURN(v1::ResaSettings resa, ResolveResa(req.resa(), lim.default_resa));

  if (req.stop_size() > lim.max_stop_strings) {
    return Invalid("stop", absl::StrCat(req.stop_size(), " strings, at most ",
                                        lim.max_stop_strings));
  }
  for (int i = 0; i < req.stop_size(); ++i) {
    const std::string& s = req.stop(i);
    if (s.empty() || int32_t(s.size()) > lim.max_stop_bytes) {
      return Invalid(absl::StrCat("stop[", i, "]"),
                     absl::StrCat("must be 1 to ", lim.max_stop_bytes, " bytes, got ", s.size()));
    }
    if (const size_t bad = tok::FindInvalidUtf8(s); bad != std::string::npos) {
      return Invalid(absl::StrCat("stop[", i, "]"),
                     absl::StrCat("not valid UTF-8 (byte ", bad, ")"));
    }
    out.stops.push_back(s);
  }
  if (req.client_tag().size() > 256) {
    return Invalid("client_tag", absl::StrCat(req.client_tag().size(), " bytes, at most 256"));
  }
  if (!std::isfinite(req.timeout_seconds()) || req.timeout_seconds() < 0) {
    return Invalid("timeout_seconds", absl::StrCat("must be >= 0, got ", req.timeout_seconds()));
  }
  out.timeout_seconds = req.timeout_seconds();

  out.admit.set_max_tokens(max_tokens);
  *out.admit.mutable_sampling() = req.sampling();
  if (!req.sampling().has_top_p()) out.admit.mutable_sampling()->set_top_p(1.0f);
  *out.admit.mutable_resa() = resa;
  out.admit.set_ignore_eos(req.ignore_eos());
  return out;
}

uint64_t TokenizerFingerprint(const Tokenizer& tok) {
  uint64_t h = Fnv1a64(absl::StrCat(tok.vocab_size(), ":"));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    h = Fnv1a64(tok.TokenBytes(id), h);
    h = Fnv1a64(std::string_view("\0", 1), h);
  }
  return h;
}

}  // namespace resa::serving
