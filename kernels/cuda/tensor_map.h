// The driver's TMA descriptor encoder (cuTensorMapEncodeTiled), looked up at run time through the
// runtime API so that nothing links against libcuda: shared by the kernels that copy by TMA.
#pragma once

#include <cuda.h>          // CUtensorMap
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

namespace resa::cuda {

// The encoder, or null when the driver has none (then no TMA kernel can run).
PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder();

}  // namespace resa::cuda
