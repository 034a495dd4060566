// Client requests: validation (every bad field -> InvalidArgument naming it), prompt encoding, and
// the settings a worker runs the sequence with.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "resa.pb.h"
#include "runtime/engine/decoder.h"
#include "runtime/tokenizer/tokenizer.h"

namespace resa::serving {

struct RequestLimits {
  int32_t max_context = 0;          // tokens per sequence (the worker's)
  int32_t default_max_tokens = 256;
  int64_t max_prompt_bytes = 1 << 20;
  int32_t max_stop_strings = 16;
  int32_t max_stop_bytes = 256;
  ResaOptions default_resa;         // for unset ReSA fields
};

struct ResolvedRequest {
  std::vector<int32_t> prompt;
  v1::AdmitSequence admit;          // everything but seq, with every setting resolved
  std::vector<std::string> stops;
  double timeout_seconds = 0;
};

// Checks `request` and encodes its prompt. Chat message contents are encoded as plain text:
// special-token strings a user typed stay text and never become control tokens.
absl::StatusOr<ResolvedRequest> ResolveRequest(const v1::GenerateRequest& request,
                                               const Tokenizer& tokenizer,
                                               const RequestLimits& limits);

// Identifies a vocabulary (ids and their bytes): a worker and its coordinator must agree on it.
uint64_t TokenizerFingerprint(const Tokenizer& tokenizer);

v1::ResaSettings ToSettings(const ResaOptions& options);

}  // namespace resa::serving
