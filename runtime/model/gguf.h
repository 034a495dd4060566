// GGUF container parser (versions 2 and 3): header, metadata of every value type, tensor infos,
// alignment. The file is memory-mapped; tensor data is referenced in place, never copied.
//
// Every offset, count and size read from the file is bounds-checked against the mapping before
// use, and counts are checked against what the remaining bytes could hold before anything is
// allocated, so a corrupt or hostile file yields an error naming the field, never a crash or a
// giant allocation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/core/mapped_file.h"
#include "runtime/model/ggml_types.h"

namespace resa::gguf {

enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view ValueTypeName(ValueType t);

// One metadata value. Scalars are widened (ints to int64/uint64, floats to double); arrays keep
// their element type and hold one Value per element (nested arrays are allowed by the format).
struct Value {
  ValueType type = ValueType::kUint8;
  ValueType elem_type = ValueType::kUint8;  // arrays only
  uint64_t u64 = 0;   // unsigned integers and bool
  int64_t i64 = 0;    // signed integers
  double f64 = 0.0;   // floats
  std::string str;    // strings
  std::vector<Value> array;

  bool is_integer() const;
  bool is_float() const { return type == ValueType::kFloat32 || type == ValueType::kFloat64; }
};

struct TensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  // ne[0] is the fastest-varying (innermost) dimension, as GGUF stores it. A 2-D weight of
  // shape [out, in] in row-major terms has ne = {in, out}.
  std::vector<int64_t> ne;
  uint64_t offset = 0;          // relative to the data section
  const uint8_t* data = nullptr;  // points into the mapping
  uint64_t nbytes = 0;

  int64_t num_elements() const;
  int64_t rows() const;  // product of ne[1..]; 1 for 1-D
  int64_t row_length() const { return ne.empty() ? 1 : ne[0]; }
};

class GgufFile {
 public:
  // Maps and parses `path`. Errors name the path and the field that was wrong.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an already-mapped (or in-memory) file; `file` is kept alive by the result.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(std::unique_ptr<MappedFile> file);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return file_->path(); }
  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  const Value* Find(std::string_view key) const;
  const TensorInfo* FindTensor(std::string_view name) const;

  // Typed getters: NotFound when missing, InvalidArgument when of the wrong type; messages name
  // the key and the file.
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // accepts integers too
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

 private:
  GgufFile() = default;
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, Value>> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

}  // namespace resa::gguf
