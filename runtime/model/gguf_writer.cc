#include "runtime/model/gguf_writer.h"

#include <cstring>

namespace resa::gguf {
namespace {

template <typename T>
void Put(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

void PutString(std::string& out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out += s;
}

void PutValue(std::string& out, const Value& v) {
  switch (v.type) {
    case ValueType::kUint8:
      Put<uint8_t>(out, static_cast<uint8_t>(v.u64));
      break;
    case ValueType::kBool:
      Put<uint8_t>(out, static_cast<uint8_t>(v.u64));
      break;
    case ValueType::kUint16:
      Put<uint16_t>(out, static_cast<uint16_t>(v.u64));
      break;
    case ValueType::kUint32:
      Put<uint32_t>(out, static_cast<uint32_t>(v.u64));
      break;
    case ValueType::kUint64:
      Put<uint64_t>(out, v.u64);
      break;
    case ValueType::kInt8:
      Put<int8_t>(out, static_cast<int8_t>(v.i64));
      break;
    case ValueType::kInt16:
      Put<int16_t>(out, static_cast<int16_t>(v.i64));
      break;
    case ValueType::kInt32:
      Put<int32_t>(out, static_cast<int32_t>(v.i64));
      break;
    case ValueType::kInt64:
      Put<int64_t>(out, v.i64);
      break;
    case ValueType::kFloat32:
      Put<float>(out, static_cast<float>(v.f64));
      break;
    case ValueType::kFloat64:
      Put<double>(out, v.f64);
      break;
    case ValueType::kString:
      PutString(out, v.str);
      break;
    case ValueType::kArray:
      Put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      Put<uint64_t>(out, v.array.size());
      for (const Value& e : v.array) PutValue(out, e);
      break;
  }
}

void PadTo(std::string& out, uint64_t alignment) {
  out.append((alignment - out.size() % alignment) % alignment, '\0');
}

}  // namespace

Value MakeUint(ValueType type, uint64_t v) {
  Value out;
  out.type = type;
  out.u64 = v;
  return out;
}

Value MakeInt(ValueType type, int64_t v) {
  Value out;
  out.type = type;
  out.i64 = v;
  return out;
}

Value MakeFloat(ValueType type, double v) {
  Value out;
  out.type = type;
  out.f64 = v;
  return out;
}

Value MakeString(std::string s) {
  Value out;
  out.type = ValueType::kString;
  out.str = std::move(s);
  return out;
}

Value MakeArray(ValueType elem_type, std::vector<Value> elems) {
  Value out;
  out.type = ValueType::kArray;
  out.elem_type = elem_type;
  out.array = std::move(elems);
  return out;
}

GgufBuilder& GgufBuilder::Add(std::string key, Value v) {
  kv_.emplace_back(std::move(key), std::move(v));
  return *this;
}

GgufBuilder& GgufBuilder::AddTensor(std::string name, uint32_t type_id, std::vector<int64_t> ne,
                                    std::string bytes, std::optional<uint64_t> offset) {
  tensors_.push_back({std::move(name), type_id, std::move(ne), std::move(bytes), offset});
  return *this;
}

GgufBuilder& GgufBuilder::AddTensorF32(std::string name, std::vector<int64_t> ne,
                                       const std::vector<float>& values) {
  std::string bytes(values.size() * 4, '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return AddTensor(std::move(name), static_cast<uint32_t>(GgmlType::kF32), std::move(ne),
                   std::move(bytes));
}

std::string GgufBuilder::Build() const {
  std::vector<std::pair<std::string, Value>> kv = kv_;
  bool has_alignment = false;
  for (const auto& p : kv) has_alignment |= p.first == "general.alignment";
  if (alignment_ != 32 && !has_alignment) {
    kv.emplace_back("general.alignment", MakeUint(ValueType::kUint32, alignment_));
  }
  std::string out;
  out += "GGUF";
  Put<uint32_t>(out, version_);
  Put<uint64_t>(out, tensors_.size());
  Put<uint64_t>(out, kv.size());
  for (const auto& [key, value] : kv) {
    PutString(out, key);
    Put<uint32_t>(out, static_cast<uint32_t>(value.type));
    PutValue(out, value);
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    PutString(out, t.name);
    Put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) Put<uint64_t>(out, static_cast<uint64_t>(d));
    Put<uint32_t>(out, t.type_id);
    Put<uint64_t>(out, t.offset.value_or(offset));
    offset += t.bytes.size();
    offset += (alignment_ - offset % alignment_) % alignment_;
  }
  PadTo(out, alignment_);
  for (const Tensor& t : tensors_) {
    out += t.bytes;
    PadTo(out, alignment_);
  }
  return out;
}

}  // namespace resa::gguf
