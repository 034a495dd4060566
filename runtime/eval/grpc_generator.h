// The --server backend of the math evaluation: Resa.Generate streams to a coordinator. Compiled
// only when RESA_HAVE_GRPC; callers go through MakeServerGenerator (math_generator.h).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/eval/math_generator.h"

namespace resa {

// Connects (waiting up to 10 s for the channel) and checks ModelInfo, so a wrong address fails
// before any work is queued.
absl::StatusOr<std::unique_ptr<MathGenerator>> MakeGrpcGenerator(
    const ServerGeneratorOptions& options);

}  // namespace resa
