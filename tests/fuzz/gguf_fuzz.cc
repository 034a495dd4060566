// libFuzzer target: arbitrary bytes as a GGUF file. Parsing, the typed getters, building a
// weight source (config, name mapping, required-weight checks) and reading the first rows of
// every weight must never crash, hang or allocate beyond the input's size.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/core/mapped_file.h"
#include "runtime/model/gguf.h"
#include "runtime/model/weight_source_internal.h"

namespace {

constexpr int64_t kMaxFloats = int64_t{1} << 20;  // bounds the output buffer per read

void Exercise(const resa::gguf::GgufFile& f) {
  for (const auto& [key, value] : f.metadata()) {
    (void)f.GetInt(key);
    (void)f.GetFloat(key);
    (void)f.GetString(key);
    (void)f.GetStringArray(key);
    (void)f.GetIntArray(key);
  }
  std::vector<float> row;
  for (const resa::gguf::TensorInfo& t : f.tensors()) {
    if (t.row_length() > kMaxFloats) continue;
    row.resize(static_cast<size_t>(t.row_length()));
    (void)resa::DequantizeRow(t.type, t.data, row.data(), t.row_length());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = resa::gguf::GgufFile::Parse(resa::MappedFile::FromBuffer(data, size, "fuzz.gguf"));
  if (!parsed.ok()) return 0;
  Exercise(**parsed);
  auto src = resa::internal::GgufWeightSourceFromFile(std::move(*parsed));
  if (!src.ok()) return 0;
  std::vector<float> out;
  for (const resa::WeightInfo& w : (*src)->weights()) {
    const int64_t rows = w.rows() < 2 ? w.rows() : 2;
    if (w.cols() > kMaxFloats / 2) continue;
    out.resize(static_cast<size_t>(rows * w.cols()));
    (void)(*src)->ReadRowsF32(w.name, 0, rows, out.data());
    (void)(*src)->ReadRowsF32(w.name, w.rows() - rows, w.rows(), out.data());
  }
  return 0;
}
