// MakeServerGenerator: the one place that knows whether this build has gRPC.
#include "runtime/eval/math_generator.h"

#if RESA_HAVE_GRPC
#include "runtime/eval/grpc_generator.h"
#endif

namespace resa {

absl::StatusOr<std::unique_ptr<MathGenerator>> MakeServerGenerator(
    const ServerGeneratorOptions& options) {
#if RESA_HAVE_GRPC
  return MakeGrpcGenerator(options);
#else
  (void)options;
  return absl::UnimplementedError(
      "--server needs a build with gRPC (configure with -DRESA_GRPC=ON)");
#endif
}

}  // namespace resa
