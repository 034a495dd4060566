// Builds the bytes of a GGUF file in memory: tiny synthetic models for tests of other modules,
// seed inputs for the fuzzers, and deliberately malformed files for parser tests (tensor type
// ids, dims and offsets are written as given, unchecked).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/model/gguf.h"

namespace resa::gguf {

// Value constructors for GgufBuilder::Add.
Value MakeUint(ValueType type, uint64_t v);  // kUint8/16/32/64 or kBool
Value MakeInt(ValueType type, int64_t v);    // kInt8/16/32/64
Value MakeFloat(ValueType type, double v);   // kFloat32/64
Value MakeString(std::string s);
Value MakeArray(ValueType elem_type, std::vector<Value> elems);

class GgufBuilder {
 public:
  // `alignment` lays out the data section; a value other than 32 also needs the
  // general.alignment key, which Build adds (as uint32) unless already present.
  explicit GgufBuilder(uint32_t version = 3, uint64_t alignment = 32)
      : version_(version), alignment_(alignment) {}

  GgufBuilder& Add(std::string key, Value v);
  // `bytes` are written as the tensor data, padded to the alignment. `type_id` is written
  // verbatim; `offset` overrides the computed data offset when set.
  GgufBuilder& AddTensor(std::string name, uint32_t type_id, std::vector<int64_t> ne,
                         std::string bytes, std::optional<uint64_t> offset = std::nullopt);
  // F32 tensor from values; ne[0] is the innermost dimension.
  GgufBuilder& AddTensorF32(std::string name, std::vector<int64_t> ne,
                            const std::vector<float>& values);

  std::string Build() const;

 private:
  struct Tensor {
    std::string name;
    uint32_t type_id;
    std::vector<int64_t> ne;
    std::string bytes;
    std::optional<uint64_t> offset;
  };
  uint32_t version_;
  uint64_t alignment_;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace resa::gguf
