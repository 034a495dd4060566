// safetensors container parser: 8-byte little-endian header length, a JSON header describing
// every tensor (dtype, shape, data_offsets relative to the end of the header), then the data.
// The file is memory-mapped; tensor data is referenced in place, never copied.
//
// The header is untrusted: its length, JSON nesting, every dtype, shape and offset pair are
// checked (offsets inside the data, size == shape x dtype size, no overflow) before use, so a
// corrupt file yields an error naming the file and the tensor, never a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/core/mapped_file.h"

namespace resa::safetensors {

enum class Dtype {
  kBool,
  kU8,
  kI8,
  kF8_E4M3,
  kF8_E5M2,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kI64,
  kU64,
  kF64,
};

std::string_view DtypeName(Dtype d);  // as spelled in files: "BF16", "F32", ...
size_t DtypeSize(Dtype d);            // bytes per element
bool IsFloatDtype(Dtype d);           // F16, BF16, F32, F64: convertible by ConvertToF32

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;  // row-major, outermost first; empty for a scalar
  uint64_t begin = 0;          // data_offsets, relative to the data section
  uint64_t end = 0;
  const uint8_t* data = nullptr;  // points into the mapping
  int64_t num_elements() const;
};

class SafetensorsFile {
 public:
  // Maps and parses `path`. Errors name the path and the offending tensor or field.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses an already-mapped (or in-memory) file; `file` is kept alive by the result.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::unique_ptr<MappedFile> file);

  const std::string& path() const { return file_->path(); }
  // In data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // "__metadata__" string pairs, sorted by key.
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }
  const TensorInfo* Find(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::unique_ptr<MappedFile> file_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

// Converts `n` consecutive elements of a float dtype to fp32; InvalidArgument for other dtypes.
absl::Status ConvertToF32(Dtype dtype, const uint8_t* src, float* dst, int64_t n);

// One tensor of a file being written (SerializeHeader, safetensors_writer.h).
struct TensorHeader {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;  // row-major, outermost first
  uint64_t num_bytes() const;  // product of shape x dtype size
};

// The 8-byte length plus the JSON header (padded with spaces to a multiple of 8, as the
// reference implementation does) for `tensors` laid out back to back in order.
std::string SerializeHeader(const std::vector<TensorHeader>& tensors,
                            const std::vector<std::pair<std::string, std::string>>& metadata = {});

// One tensor for SerializeSafetensors: `bytes` must hold exactly shape x dtype size bytes.
struct TensorToWrite {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  std::string bytes;
};

// The bytes of a safetensors file holding `tensors` in order (tests, tools, fuzz seeds).
std::string SerializeSafetensors(
    const std::vector<TensorToWrite>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace resa::safetensors
