// libFuzzer target: arbitrary bytes as a .safetensors file. Parsing and converting the first
// elements of every float tensor must never crash, hang or allocate beyond the input's size.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/core/mapped_file.h"
#include "runtime/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = resa::safetensors::SafetensorsFile::Parse(
      resa::MappedFile::FromBuffer(data, size, "fuzz.safetensors"));
  if (!parsed.ok()) return 0;
  std::vector<float> out;
  for (const resa::safetensors::TensorInfo& t : (*parsed)->tensors()) {
    const int64_t n = t.num_elements() < 4096 ? t.num_elements() : 4096;
    out.resize(static_cast<size_t>(n));
    (void)resa::safetensors::ConvertToF32(t.dtype, t.data, out.data(), n);
  }
  (void)(*parsed)->Find("model.embed_tokens.weight");
  return 0;
}
