#include "runtime/model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status.h"
#include "runtime/model/ggml_types.h"

namespace resa::safetensors {
namespace {

using Json = nlohmann::json;  // std::map objects: O(log n) inserts on hostile headers

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // as the reference implementation
constexpr int kMaxJsonDepth = 64;

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  size_t size;
};
constexpr DtypeEntry kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},       {Dtype::kU8, "U8", 1},           {Dtype::kI8, "I8", 1},
    {Dtype::kF8_E4M3, "F8_E4M3", 1}, {Dtype::kF8_E5M2, "F8_E5M2", 1}, {Dtype::kI16, "I16", 2},
    {Dtype::kU16, "U16", 2},         {Dtype::kF16, "F16", 2},         {Dtype::kBF16, "BF16", 2},
    {Dtype::kI32, "I32", 4},         {Dtype::kU32, "U32", 4},         {Dtype::kF32, "F32", 4},
    {Dtype::kI64, "I64", 8},         {Dtype::kU64, "U64", 8},         {Dtype::kF64, "F64", 8},
};

// Nesting depth of a JSON text, ignoring brackets inside strings. Bounds the parser's and the
// destructor's work on hostile input before nlohmann sees it.
int JsonDepth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) max_depth = depth;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

absl::StatusOr<uint64_t> NonNegativeInt(const Json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("expected a non-negative integer, got ",
                   j.dump(-1, ' ', false, Json::error_handler_t::replace)));
}

absl::StatusOr<TensorInfo> ParseTensor(const std::string& name, const Json& j, uint64_t data_size) {
  TensorInfo t;
  t.name = name;
  if (!j.is_object()) return absl::InvalidArgumentError("entry is not a JSON object");
  auto dt = j.find("dtype");
  if (dt == j.end() || !dt->is_string()) {
    return absl::InvalidArgumentError("'dtype' is missing or not a string");
  }
  const std::string dtype = dt->get<std::string>();
  bool known = false;
  for (const DtypeEntry& e : kDtypes) {
    if (e.name == dtype) {
      t.dtype = e.dtype;
      known = true;
    }
  }
  if (!known) return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", dtype, "'"));

  auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array()) {
    return absl::InvalidArgumentError("'shape' is missing or not an array");
  }
  if (sh->size() > 8) {
    return absl::InvalidArgumentError(absl::StrCat("'shape' has ", sh->size(), " dimensions"));
  }
  uint64_t elements = 1;
  for (const Json& d : *sh) {
    absl::StatusOr<uint64_t> v = NonNegativeInt(d);
    if (!v.ok()) return Annotate(v.status(), "'shape'");
    if (*v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        (*v != 0 && elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / *v)) {
      return absl::InvalidArgumentError("'shape' element count overflows");
    }
    elements *= *v;
    t.shape.push_back(static_cast<int64_t>(*v));
  }

  auto off = j.find("data_offsets");
  if (off == j.end() || !off->is_array() || off->size() != 2) {
    return absl::InvalidArgumentError("'data_offsets' is missing or not a [begin, end] pair");
  }
  absl::StatusOr<uint64_t> begin = NonNegativeInt((*off)[0]);
  if (!begin.ok()) return Annotate(begin.status(), "'data_offsets'[0]");
  absl::StatusOr<uint64_t> end = NonNegativeInt((*off)[1]);
  if (!end.ok()) return Annotate(end.status(), "'data_offsets'[1]");
  if (*begin > *end || *end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("'data_offsets' [", *begin, ", ", *end,
                                                   ") lie outside the data section of ", data_size,
                                                   " bytes"));
  }
  const size_t esize = DtypeSize(t.dtype);
  if (elements > std::numeric_limits<uint64_t>::max() / esize ||
      elements * esize != *end - *begin) {
    return absl::InvalidArgumentError(absl::StrCat("'data_offsets' span ", *end - *begin,
                                                   " bytes but shape x ", dtype, " needs ",
                                                   elements, " x ", esize));
  }
  t.begin = *begin;
  t.end = *end;
  return t;
}

}  // namespace

std::string_view DtypeName(Dtype d) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == d) return e.name;
  }
  return "?";
}

size_t DtypeSize(Dtype d) {
  for (const DtypeEntry& e : kDtypes) {
    if (e.dtype == d) return e.size;
  }
  return 1;
}

bool IsFloatDtype(Dtype d) {
  return d == Dtype::kF16 || d == Dtype::kBF16 || d == Dtype::kF32 || d == Dtype::kF64;
}

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the parser guarantees no overflow
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  RESA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::unique_ptr<MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("SafetensorsFile::Parse: null file");
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->file_ = std::move(file);
  const std::string& path = f->file_->path();
  auto bad = [&path](absl::string_view field, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": safetensors ", field, ": ", what));
  };
  const uint8_t* bytes = f->file_->data();
  const uint64_t size = f->file_->size();
  if (size < 8) {
    return bad("header length", absl::StrCat("file of ", size, " bytes is too short"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > size - 8) {
    return bad("header length", absl::StrCat(header_len, " bytes exceeds the ", size - 8,
                                             " bytes after it; the file is truncated or not "
                                             "safetensors"));
  }
  if (header_len > kMaxHeaderBytes) {
    return bad("header length",
               absl::StrCat(header_len, " bytes exceeds the limit of ", kMaxHeaderBytes));
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + 8),
                              static_cast<size_t>(header_len));
  if (int depth = JsonDepth(text); depth > kMaxJsonDepth) {
    return bad("header", absl::StrCat("JSON nested ", depth, " levels deep"));
  }
  const uint64_t data_size = size - 8 - header_len;
  const uint8_t* data = bytes + 8 + header_len;

  try {
    const Json header = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded()) return bad("header", "is not valid JSON");
    if (!header.is_object()) return bad("header", "is not a JSON object");
    f->tensors_.reserve(header.size());
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) return bad("__metadata__", "is not a JSON object");
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) {
            return bad("__metadata__", absl::StrCat("value of '", mk, "' is not a string"));
          }
          f->metadata_.emplace_back(mk, mv.get<std::string>());
        }
        continue;
      }
      absl::StatusOr<TensorInfo> t = ParseTensor(key, value, data_size);
      if (!t.ok()) return bad(absl::StrCat("tensor '", key, "'"), t.status().message());
      t->data = data + t->begin;
      f->tensors_.push_back(std::move(*t));
    }
  } catch (const std::exception& e) {
    return bad("header", absl::StrCat("JSON error: ", e.what()));
  }
  // File order: by data offset (JSON object order is not preserved by the parser).
  std::stable_sort(f->tensors_.begin(), f->tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_.emplace(f->tensors_[i].name, i);
  return f;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(AsAbsl(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status ConvertToF32(Dtype dtype, const uint8_t* src, float* dst, int64_t n) {
  switch (dtype) {
    case Dtype::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return absl::OkStatus();
    case Dtype::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      return absl::OkStatus();
    case Dtype::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = Bf16ToFloat(h);
      }
      return absl::OkStatus();
    case Dtype::kF64:
      for (int64_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors dtype ", AsAbsl(DtypeName(dtype)), " cannot be read as fp32"));
  }
}

uint64_t TensorHeader::num_bytes() const {
  uint64_t n = DtypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::string SerializeHeader(const std::vector<TensorHeader>& tensors,
                            const std::vector<std::pair<std::string, std::string>>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json m = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const TensorHeader& t : tensors) {
    Json e = Json::object();
    e["dtype"] = std::string(DtypeName(t.dtype));
    e["shape"] = t.shape;
    e["data_offsets"] = {offset, offset + t.num_bytes()};
    offset += t.num_bytes();
    header[t.name] = std::move(e);
  }
  std::string text = header.dump(-1, ' ', false, Json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  out += text;
  return out;
}

std::string SerializeSafetensors(const std::vector<TensorToWrite>& tensors,
                                 const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<TensorHeader> headers;
  headers.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) headers.push_back({t.name, t.dtype, t.shape});
  std::string out = SerializeHeader(headers, metadata);
  for (const TensorToWrite& t : tensors) out += t.bytes;
  return out;
}

}  // namespace resa::safetensors
