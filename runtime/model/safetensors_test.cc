#include "runtime/model/safetensors.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/ggml_types.h"

namespace resa::safetensors {
namespace {

using ::testing::HasSubstr;

struct Parsed {
  std::string bytes;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file;
};

Parsed ParseBytes(std::string bytes, const std::string& name = "mem.safetensors") {
  Parsed p{std::move(bytes), absl::InternalError("unset")};
  p.file = SafetensorsFile::Parse(MappedFile::FromBuffer(p.bytes.data(), p.bytes.size(), name));
  return p;
}

// A file whose header is exactly `json` (padded with spaces) followed by `data`.
std::string WithHeader(const std::string& json, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + data;
}

void ExpectError(const std::string& bytes, const std::vector<std::string>& parts) {
  Parsed p = ParseBytes(bytes, "bad.safetensors");
  ASSERT_FALSE(p.file.ok()) << "parsed unexpectedly";
  const std::string msg(p.file.status().message());
  EXPECT_THAT(msg, HasSubstr("bad.safetensors"));
  for (const std::string& part : parts) EXPECT_THAT(msg, HasSubstr(part));
}

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

TEST(Safetensors, RoundTripsFloatDtypes) {
  std::vector<uint16_t> bf16, f16;
  std::vector<float> f32;
  for (int i = 0; i < 6; ++i) {
    bf16.push_back(FloatToBf16(static_cast<float>(i) - 2.5f));
    f16.push_back(FloatToHalf(static_cast<float>(i) * 0.25f));
    f32.push_back(static_cast<float>(i) * 1.5f);
  }
  const std::string bytes =
      SerializeSafetensors({{"a.bf16", Dtype::kBF16, {2, 3}, Bytes(bf16)},
                            {"b.f16", Dtype::kF16, {6}, Bytes(f16)},
                            {"c.f32", Dtype::kF32, {3, 1, 2}, Bytes(f32)},
                            {"scalar", Dtype::kI64, {}, Bytes(std::vector<int64_t>{7})}},
                           {{"format", "pt"}});
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  Parsed p = ParseBytes(bytes);
  ASSERT_TRUE(p.file.ok()) << p.file.status();
  const SafetensorsFile& f = **p.file;
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "a.bf16");  // file order is kept
  ASSERT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.metadata()[0].second, "pt");
  const TensorInfo* a = f.Find("a.bf16");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->num_elements(), 6);
  std::vector<float> out(6);
  ASSERT_TRUE(ConvertToF32(a->dtype, a->data, out.data(), 6).ok());
  EXPECT_EQ(out[0], -2.5f);
  EXPECT_EQ(out[5], 2.5f);
  const TensorInfo* b = f.Find("b.f16");
  ASSERT_TRUE(ConvertToF32(b->dtype, b->data, out.data(), 6).ok());
  EXPECT_EQ(out[3], 0.75f);
  const TensorInfo* c = f.Find("c.f32");
  ASSERT_TRUE(ConvertToF32(c->dtype, c->data, out.data(), 6).ok());
  EXPECT_EQ(out[5], 7.5f);
  const TensorInfo* s = f.Find("scalar");
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->num_elements(), 1);
  EXPECT_EQ(ConvertToF32(s->dtype, s->data, out.data(), 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.Find("nope"), nullptr);
}

TEST(Safetensors, EmptyHeaderObject) {
  Parsed p = ParseBytes(WithHeader("{}"));
  ASSERT_TRUE(p.file.ok()) << p.file.status();
  EXPECT_TRUE((*p.file)->tensors().empty());
}

TEST(Safetensors, BadLengths) {
  ExpectError("abc", {"too short"});
  ExpectError(WithHeader("{}").substr(0, 9), {"header length"});
  std::string huge(8, '\0');
  const uint64_t n = uint64_t{1} << 62;
  std::memcpy(huge.data(), &n, 8);
  ExpectError(huge + "{}", {"header length"});
}

TEST(Safetensors, BadJson) {
  ExpectError(WithHeader("{\"a\": "), {"not valid JSON"});
  ExpectError(WithHeader("[1, 2]"), {"not a JSON object"});
  ExpectError(WithHeader(std::string(1000, '[') + std::string(1000, ']')), {"nested"});
  ExpectError(WithHeader("{\"__metadata__\": {\"k\": 1}}"), {"__metadata__", "'k'"});
}

TEST(Safetensors, BadTensorEntries) {
  const std::string data(16, '\0');
  ExpectError(WithHeader(R"({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}})", data),
              {"tensor 'w'", "unknown dtype 'Q4'"});
  ExpectError(WithHeader(R"({"w": {"shape": [4], "data_offsets": [0, 16]}})", data),
              {"tensor 'w'", "dtype"});
  ExpectError(
      WithHeader(R"({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", data),
      {"tensor 'w'", "shape"});
  ExpectError(
      WithHeader(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}})", data),
      {"tensor 'w'", "shape"});
  ExpectError(WithHeader(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}})", data),
              {"tensor 'w'", "outside the data section"});
  ExpectError(WithHeader(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}})", data),
              {"tensor 'w'", "data_offsets"});
  ExpectError(WithHeader(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", data),
              {"tensor 'w'", "needs 3 x 4"});
  ExpectError(WithHeader(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", data),
              {"tensor 'w'", "data_offsets"});
  ExpectError(WithHeader(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296],
                               "data_offsets": [0, 16]}})",
                         data),
              {"tensor 'w'", "overflows"});
  ExpectError(WithHeader(R"({"w": [1, 2]})", data), {"tensor 'w'", "not a JSON object"});
}

TEST(Safetensors, EveryTruncationFailsCleanly) {
  const std::string full = SerializeSafetensors({{"x", Dtype::kF32, {2, 2}, std::string(16, '\1')},
                                                 {"y", Dtype::kBF16, {4}, std::string(8, '\2')}});
  ASSERT_TRUE(ParseBytes(full).file.ok());
  for (size_t n = 0; n < full.size(); ++n) {
    Parsed p = ParseBytes(full.substr(0, n), "trunc.safetensors");
    ASSERT_FALSE(p.file.ok()) << n;
  }
}

}  // namespace
}  // namespace resa::safetensors
