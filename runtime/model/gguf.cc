#include "runtime/model/gguf.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr int kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;  // nested arrays deeper than this are rejected (no recursion
                                   // bomb); real files nest at most 1 level
constexpr uint64_t kMaxValues = uint64_t{1} << 23;  // metadata values in all, bounds memory use
constexpr uint64_t kMaxKeyBytes = 65535;
constexpr uint64_t kMaxTensorNameBytes = 4096;
constexpr uint64_t kDefaultAlignment = 32;

// Smallest encoding of one element of `t` (used to bound counts before allocating).
uint64_t MinEncodedSize(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
    case ValueType::kString:  // u64 length
      return 8;
    case ValueType::kArray:  // u32 type + u64 count
      return 12;
  }
  return 1;
}

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kFloat64); }

// Bounds-checked little-endian reader over the mapping. Every failure names the field.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": GGUF ", field, ": ", what, " (at byte ", pos_, ")"));
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view field) {
    if (remaining() < sizeof(T)) {
      return Error(field, absl::StrCat("truncated file: need ", sizeof(T), " bytes, ", remaining(),
                                       " left"));
    }
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(absl::string_view field, uint64_t max_len) {
    RESA_ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(field));
    if (len > remaining()) {
      return Error(field, absl::StrCat("string length ", len, " exceeds the ", remaining(),
                                       " bytes left in the file"));
    }
    if (len > max_len) {
      return Error(field, absl::StrCat("string length ", len, " exceeds the limit of ", max_len));
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

class MetadataParser {
 public:
  explicit MetadataParser(Reader& r) : r_(r) {}

  // Reads one value of type `t` into `out`; `field` names it in errors.
  absl::Status ReadValue(ValueType t, const std::string& field, int depth, Value& out) {
    out.type = t;
    if (++values_ > kMaxValues) {
      return r_.Error(field, absl::StrCat("more than ", kMaxValues, " metadata values in total"));
    }
    switch (t) {
      case ValueType::kUint8:
        return ReadUnsigned<uint8_t>(field, out);
      case ValueType::kUint16:
        return ReadUnsigned<uint16_t>(field, out);
      case ValueType::kUint32:
        return ReadUnsigned<uint32_t>(field, out);
      case ValueType::kUint64:
        return ReadUnsigned<uint64_t>(field, out);
      case ValueType::kInt8:
        return ReadSigned<int8_t>(field, out);
      case ValueType::kInt16:
        return ReadSigned<int16_t>(field, out);
      case ValueType::kInt32:
        return ReadSigned<int32_t>(field, out);
      case ValueType::kInt64:
        return ReadSigned<int64_t>(field, out);
      case ValueType::kFloat32: {
        RESA_ASSIGN_OR_RETURN(float v, r_.Read<float>(field));
        out.f64 = v;
        return absl::OkStatus();
      }
      case ValueType::kFloat64: {
        RESA_ASSIGN_OR_RETURN(out.f64, r_.Read<double>(field));
        return absl::OkStatus();
      }
      case ValueType::kBool: {
        RESA_ASSIGN_OR_RETURN(uint8_t v, r_.Read<uint8_t>(field));
        if (v > 1) return r_.Error(field, absl::StrCat("bool value ", int{v}, " is not 0 or 1"));
        out.u64 = v;
        return absl::OkStatus();
      }
      case ValueType::kString: {
        RESA_ASSIGN_OR_RETURN(out.str, r_.ReadString(field, std::numeric_limits<uint64_t>::max()));
        return absl::OkStatus();
      }
      case ValueType::kArray:
        return ReadArray(field, depth, out);
    }
    return r_.Error(field, absl::StrCat("unknown value type ", static_cast<uint32_t>(t)));
  }

 private:
  template <typename T>
  absl::Status ReadUnsigned(const std::string& field, Value& out) {
    RESA_ASSIGN_OR_RETURN(T v, r_.Read<T>(field));
    out.u64 = v;
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status ReadSigned(const std::string& field, Value& out) {
    RESA_ASSIGN_OR_RETURN(T v, r_.Read<T>(field));
    out.i64 = v;
    return absl::OkStatus();
  }

  absl::Status ReadArray(const std::string& field, int depth, Value& out) {
    if (depth >= kMaxArrayDepth) {
      return r_.Error(field, absl::StrCat("arrays nested deeper than ", kMaxArrayDepth));
    }
    RESA_ASSIGN_OR_RETURN(uint32_t et, r_.Read<uint32_t>(absl::StrCat(field, " element type")));
    if (!IsKnownValueType(et)) {
      return r_.Error(field, absl::StrCat("unknown array element type ", et));
    }
    out.elem_type = static_cast<ValueType>(et);
    RESA_ASSIGN_OR_RETURN(uint64_t n, r_.Read<uint64_t>(absl::StrCat(field, " array count")));
    const uint64_t min_size = MinEncodedSize(out.elem_type);
    if (n > r_.remaining() / min_size) {
      return r_.Error(
          field, absl::StrCat("array count ", n, " of ", AsAbsl(ValueTypeName(out.elem_type)),
                              " cannot fit in the ", r_.remaining(), " bytes left in the file"));
    }
    if (n > kMaxValues - values_) {
      return r_.Error(field, absl::StrCat("array count ", n, " exceeds the metadata limit of ",
                                          kMaxValues, " values"));
    }
    out.array.resize(static_cast<size_t>(n));
    for (uint64_t i = 0; i < n; ++i) {
      // Element names are only built on failure; most arrays are large and all fine.
      absl::Status st = ReadValue(out.elem_type, field, depth + 1, out.array[i]);
      if (!st.ok()) {
        return absl::Status(st.code(), absl::StrCat(st.message(), " [array element ", i, "]"));
      }
    }
    return absl::OkStatus();
  }

  Reader& r_;
  uint64_t values_ = 0;
};

bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

absl::Status WrongType(const GgufFile& f, absl::string_view key, const Value& v,
                       absl::string_view want) {
  std::string have(ValueTypeName(v.type));
  if (v.type == ValueType::kArray) absl::StrAppend(&have, " of ", AsAbsl(ValueTypeName(v.elem_type)));
  return absl::InvalidArgumentError(
      absl::StrCat(f.path(), ": GGUF metadata '", key, "' is ", have, ", expected ", want));
}

absl::StatusOr<int64_t> AsInt(const Value& v, absl::string_view what) {
  switch (v.type) {
    case ValueType::kUint8:
    case ValueType::kUint16:
    case ValueType::kUint32:
    case ValueType::kUint64:
      if (v.u64 > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return absl::OutOfRangeError(absl::StrCat(what, " value ", v.u64, " exceeds int64"));
      }
      return static_cast<int64_t>(v.u64);
    case ValueType::kInt8:
    case ValueType::kInt16:
    case ValueType::kInt32:
    case ValueType::kInt64:
      return v.i64;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is ", AsAbsl(ValueTypeName(v.type)), ", expected an integer"));
  }
}

}  // namespace

std::string_view ValueTypeName(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kUint16:
    case ValueType::kInt16:
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kUint64:
    case ValueType::kInt64:
      return true;
    default:
      return false;
  }
}

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // the parser guarantees no overflow
  return n;
}

int64_t TensorInfo::rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < ne.size(); ++i) n *= ne[i];
  return n;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::unique_ptr<MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("GgufFile::Parse: null file");
  std::unique_ptr<GgufFile> g(new GgufFile());
  g->file_ = std::move(file);
  const std::string& path = g->file_->path();
  Reader r(g->file_->data(), g->file_->size(), path);

  RESA_ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  if (magic != kMagic) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a GGUF file (magic 0x",
                                                   absl::Hex(magic, absl::kZeroPad8),
                                                   ", expected \"GGUF\")"));
  }
  RESA_ASSIGN_OR_RETURN(g->version_, r.Read<uint32_t>("version"));
  if (g->version_ != 2 && g->version_ != 3) {
    std::string hint;
    if (g->version_ == 1) hint = "; version 1 files are obsolete, re-convert the model";
    if (g->version_ > 0xFFFF) hint = "; big-endian files are not supported";
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported GGUF version ", g->version_, " (supported: 2, 3)", hint));
  }
  RESA_ASSIGN_OR_RETURN(uint64_t n_tensors, r.Read<uint64_t>("tensor_count"));
  RESA_ASSIGN_OR_RETURN(uint64_t n_kv, r.Read<uint64_t>("metadata_kv_count"));
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
  if (n_kv > r.remaining() / 13) {
    return r.Error("metadata_kv_count", absl::StrCat(n_kv, " pairs cannot fit in the ",
                                                     r.remaining(), " bytes left in the file"));
  }
  // A tensor info takes at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 + 8 bytes.
  if (n_tensors > r.remaining() / 32) {
    return r.Error("tensor_count", absl::StrCat(n_tensors, " tensors cannot fit in the ",
                                                r.remaining(), " bytes left in the file"));
  }

  MetadataParser mp(r);
  g->metadata_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    RESA_ASSIGN_OR_RETURN(std::string key,
                          r.ReadString(absl::StrCat("metadata key #", i), kMaxKeyBytes));
    const std::string field = absl::StrCat("metadata '", key, "'");
    RESA_ASSIGN_OR_RETURN(uint32_t type, r.Read<uint32_t>(absl::StrCat(field, " value type")));
    if (!IsKnownValueType(type)) {
      return r.Error(field, absl::StrCat("unknown value type ", type));
    }
    Value v;
    RESA_RETURN_IF_ERROR(mp.ReadValue(static_cast<ValueType>(type), field, 0, v));
    if (!g->metadata_index_.emplace(key, g->metadata_.size()).second) {
      return r.Error(field, "duplicate metadata key");
    }
    g->metadata_.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = g->Find("general.alignment")) {
    absl::StatusOr<int64_t> al = AsInt(*a, "general.alignment");
    if (!al.ok()) return r.Error("metadata 'general.alignment'", al.status().message());
    if (*al <= 0 || (*al & (*al - 1)) != 0 || *al > (int64_t{1} << 30)) {
      return r.Error("metadata 'general.alignment'",
                     absl::StrCat("alignment ", *al, " is not a power of two in [1, 2^30]"));
    }
    g->alignment_ = static_cast<uint64_t>(*al);
  } else {
    g->alignment_ = kDefaultAlignment;
  }

  g->tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    RESA_ASSIGN_OR_RETURN(t.name,
                          r.ReadString(absl::StrCat("tensor #", i, " name"), kMaxTensorNameBytes));
    const std::string field = absl::StrCat("tensor '", t.name, "' (#", i, ")");
    RESA_ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>(absl::StrCat(field, " n_dims")));
    if (n_dims < 1 || n_dims > kMaxDims) {
      return r.Error(field, absl::StrCat("n_dims ", n_dims, " is outside [1, ", kMaxDims, "]"));
    }
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      RESA_ASSIGN_OR_RETURN(uint64_t ne, r.Read<uint64_t>(absl::StrCat(field, " ne[", d, "]")));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return r.Error(field, absl::StrCat("dimension ne[", d, "] = ", ne, " is out of range"));
      }
      if (!CheckedMul(elements, ne, &elements) ||
          elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return r.Error(field, "element count overflows");
      }
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    RESA_ASSIGN_OR_RETURN(uint32_t type_id, r.Read<uint32_t>(absl::StrCat(field, " type")));
    absl::StatusOr<GgmlTypeTraits> traits = TraitsOf(type_id);
    if (!traits.ok()) return r.Error(field, absl::StrCat("unknown ggml type id ", type_id));
    t.type = static_cast<GgmlType>(type_id);
    if (t.ne[0] % traits->block_elems != 0) {
      return r.Error(field,
                     absl::StrCat("row length ne[0] = ", t.ne[0], " is not a multiple of ",
                                  traits->block_elems, " (block size of ", AsAbsl(traits->name), ")"));
    }
    if (!CheckedMul(elements / static_cast<uint64_t>(traits->block_elems), traits->block_bytes,
                    &t.nbytes)) {
      return r.Error(field, "byte size overflows");
    }
    RESA_ASSIGN_OR_RETURN(t.offset, r.Read<uint64_t>(absl::StrCat(field, " offset")));
    if (t.offset % g->alignment_ != 0) {
      return r.Error(field, absl::StrCat("offset ", t.offset,
                                         " is not a multiple of the alignment ", g->alignment_));
    }
    if (!g->tensor_index_.emplace(t.name, g->tensors_.size()).second) {
      return r.Error(field, "duplicate tensor name");
    }
    g->tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t size = g->file_->size();
  const uint64_t header_end = r.pos();
  const uint64_t pad = (g->alignment_ - header_end % g->alignment_) % g->alignment_;
  const uint64_t data_start = header_end + pad;
  if (!g->tensors_.empty() && data_start > size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": GGUF data section: starts at byte ",
                                                   data_start, " past the end of the file (", size,
                                                   " bytes); the file is truncated"));
  }
  const uint64_t data_size = data_start <= size ? size - data_start : 0;
  for (size_t i = 0; i < g->tensors_.size(); ++i) {
    TensorInfo& t = g->tensors_[i];
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": GGUF tensor '", t.name, "' (#", i, "): data [", t.offset, ", +",
                       t.nbytes, ") lies outside the data section of ", data_size,
                       " bytes; the file is truncated or "
                       "corrupt"));
    }
    t.data = g->file_->data() + data_start + t.offset;
  }
  return g;
}

const Value* GgufFile::Find(std::string_view key) const {
  auto it = metadata_index_.find(AsAbsl(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(AsAbsl(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
absl::Status NotFound(const GgufFile& f, absl::string_view key) {
  return absl::NotFoundError(absl::StrCat(f.path(), ": GGUF metadata '", key, "' is missing"));
}
}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return NotFound(*this, AsAbsl(key));
  if (!v->is_integer()) return WrongType(*this, AsAbsl(key), *v, "an integer");
  return AsInt(*v, absl::StrCat(path(), ": GGUF metadata '", AsAbsl(key), "'"));
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return NotFound(*this, AsAbsl(key));
  if (v->is_float()) return v->f64;
  if (v->is_integer()) {
    RESA_ASSIGN_OR_RETURN(int64_t i, GetInt(key));
    return static_cast<double>(i);
  }
  return WrongType(*this, AsAbsl(key), *v, "a number");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return NotFound(*this, AsAbsl(key));
  if (v->type != ValueType::kBool) return WrongType(*this, AsAbsl(key), *v, "bool");
  return v->u64 != 0;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return NotFound(*this, AsAbsl(key));
  if (v->type != ValueType::kString) return WrongType(*this, AsAbsl(key), *v, "string");
  return v->str;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return NotFound(*this, AsAbsl(key));
  if (v->type != ValueType::kArray || v->elem_type != ValueType::kString) {
    return WrongType(*this, AsAbsl(key), *v, "array of string");
  }
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const Value& e : v->array) out.push_back(e.str);
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) return NotFound(*this, AsAbsl(key));
  Value elem;
  elem.type = v->elem_type;
  if (v->type != ValueType::kArray || !elem.is_integer()) {
    return WrongType(*this, AsAbsl(key), *v, "array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (size_t i = 0; i < v->array.size(); ++i) {
    RESA_ASSIGN_OR_RETURN(int64_t x, AsInt(v->array[i], absl::StrCat(path(), ": GGUF metadata '",
                                                                     AsAbsl(key), "'[", i, "]")));
    out.push_back(x);
  }
  return out;
}

}  // namespace resa::gguf
