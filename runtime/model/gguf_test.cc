#include "runtime/model/gguf.h"

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/gguf_writer.h"

namespace resa::gguf {
namespace {

using ::testing::HasSubstr;

// Keeps the bytes alive for as long as the parsed file (FromBuffer does not copy).
struct Parsed {
  std::string bytes;
  absl::StatusOr<std::unique_ptr<GgufFile>> file;
};

Parsed ParseBytes(std::string bytes, const std::string& name = "mem.gguf") {
  Parsed p{std::move(bytes), absl::InternalError("unset")};
  p.file = GgufFile::Parse(MappedFile::FromBuffer(p.bytes.data(), p.bytes.size(), name));
  return p;
}

// Expects a parse failure whose message contains every one of `parts`.
void ExpectError(const std::string& bytes, const std::vector<std::string>& parts) {
  Parsed p = ParseBytes(bytes, "bad.gguf");
  ASSERT_FALSE(p.file.ok()) << "parsed unexpectedly";
  const std::string msg(p.file.status().message());
  EXPECT_THAT(msg, HasSubstr("bad.gguf"));
  for (const std::string& part : parts) EXPECT_THAT(msg, HasSubstr(part));
}

GgufBuilder AllTypesBuilder(uint32_t version, uint64_t alignment) {
  GgufBuilder b(version, alignment);
  b.Add("u8", MakeUint(ValueType::kUint8, 200))
      .Add("i8", MakeInt(ValueType::kInt8, -100))
      .Add("u16", MakeUint(ValueType::kUint16, 60000))
      .Add("i16", MakeInt(ValueType::kInt16, -30000))
      .Add("u32", MakeUint(ValueType::kUint32, 4000000000u))
      .Add("i32", MakeInt(ValueType::kInt32, -2000000000))
      .Add("f32", MakeFloat(ValueType::kFloat32, 0.5))
      .Add("bool", MakeUint(ValueType::kBool, 1))
      .Add("str", MakeString("héllo"))
      .Add("u64", MakeUint(ValueType::kUint64, uint64_t{1} << 40))
      .Add("i64", MakeInt(ValueType::kInt64, -(int64_t{1} << 40)))
      .Add("f64", MakeFloat(ValueType::kFloat64, 1e-300))
      .Add("ints", MakeArray(ValueType::kInt32,
                             {MakeInt(ValueType::kInt32, 1), MakeInt(ValueType::kInt32, -2)}))
      .Add("strs",
           MakeArray(ValueType::kString, {MakeString("a"), MakeString(""), MakeString("ccc")}))
      .Add("empty", MakeArray(ValueType::kFloat32, {}))
      .Add("nested",
           MakeArray(ValueType::kArray,
                     {MakeArray(ValueType::kUint8, {MakeUint(ValueType::kUint8, 7)}),
                      MakeArray(ValueType::kString, {MakeString("x"), MakeString("y")})}));
  std::vector<float> a(32);
  for (int i = 0; i < 32; ++i) a[i] = static_cast<float>(i);
  b.AddTensorF32("a", {8, 4}, a);
  std::string q8(34 * 2, '\0');  // two Q8_0 blocks: d = 1, q = 0..31 and 0..-31
  const uint16_t one = FloatToHalf(1.0f);
  for (int blk = 0; blk < 2; ++blk) {
    std::memcpy(&q8[34 * blk], &one, 2);
    for (int j = 0; j < 32; ++j) q8[34 * blk + 2 + j] = static_cast<char>(blk == 0 ? j : -j);
  }
  b.AddTensor("b.q8", static_cast<uint32_t>(GgmlType::kQ8_0), {32, 2}, q8);
  b.AddTensorF32("c", {3}, {1.0f, 2.0f, 3.0f});
  return b;
}

class AllTypes : public ::testing::TestWithParam<std::pair<uint32_t, uint64_t>> {};

TEST_P(AllTypes, ParsesEveryValueTypeAndTensor) {
  const auto [version, alignment] = GetParam();
  Parsed p = ParseBytes(AllTypesBuilder(version, alignment).Build());
  ASSERT_TRUE(p.file.ok()) << p.file.status();
  const GgufFile& f = **p.file;
  EXPECT_EQ(f.version(), version);
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(*f.GetInt("u8"), 200);
  EXPECT_EQ(*f.GetInt("i8"), -100);
  EXPECT_EQ(*f.GetInt("u16"), 60000);
  EXPECT_EQ(*f.GetInt("i16"), -30000);
  EXPECT_EQ(*f.GetInt("u32"), 4000000000);
  EXPECT_EQ(*f.GetInt("i32"), -2000000000);
  EXPECT_EQ(*f.GetFloat("f32"), 0.5);
  EXPECT_EQ(*f.GetBool("bool"), true);
  EXPECT_EQ(*f.GetString("str"), "héllo");
  EXPECT_EQ(*f.GetInt("u64"), int64_t{1} << 40);
  EXPECT_EQ(*f.GetInt("i64"), -(int64_t{1} << 40));
  EXPECT_EQ(*f.GetFloat("f64"), 1e-300);
  EXPECT_EQ(*f.GetFloat("u32"), 4e9);  // integers widen to floats
  EXPECT_EQ(*f.GetIntArray("ints"), (std::vector<int64_t>{1, -2}));
  EXPECT_EQ(*f.GetStringArray("strs"), (std::vector<std::string>{"a", "", "ccc"}));
  const Value* empty = f.Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->elem_type, ValueType::kFloat32);
  EXPECT_TRUE(empty->array.empty());
  const Value* nested = f.Find("nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->array.size(), 2u);
  EXPECT_EQ(nested->array[0].elem_type, ValueType::kUint8);
  EXPECT_EQ(nested->array[0].array[0].u64, 7u);
  EXPECT_EQ(nested->array[1].array[1].str, "y");
  const size_t expected_kv = alignment == 32 ? 16 : 17;  // + general.alignment
  EXPECT_EQ(f.metadata().size(), expected_kv);
  EXPECT_EQ(f.metadata()[0].first, "u8");

  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorInfo* a = f.FindTensor("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->ne, (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(a->rows(), 4);
  EXPECT_EQ(a->row_length(), 8);
  EXPECT_EQ(a->num_elements(), 32);
  EXPECT_EQ(a->nbytes, 128u);
  float a31;
  std::memcpy(&a31, a->data + 31 * 4, 4);
  EXPECT_EQ(a31, 31.0f);
  const TensorInfo* q = f.FindTensor("b.q8");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->type, GgmlType::kQ8_0);
  EXPECT_EQ(q->nbytes, 68u);
  EXPECT_EQ(q->offset % alignment, 0u);
  const auto file_offset = q->data - reinterpret_cast<const uint8_t*>(p.bytes.data());
  EXPECT_EQ(static_cast<uint64_t>(file_offset) % alignment, 0u);
  std::vector<float> row(64);
  ASSERT_TRUE(DequantizeRow(q->type, q->data, row.data(), 64).ok());
  EXPECT_EQ(row[5], 5.0f);
  EXPECT_EQ(row[32 + 5], -5.0f);
  EXPECT_EQ(f.FindTensor("c")->rows(), 1);
  EXPECT_EQ(f.FindTensor("missing"), nullptr);
}

INSTANTIATE_TEST_SUITE_P(VersionsAndAlignments, AllTypes,
                         ::testing::Values(std::make_pair(3u, uint64_t{32}),
                                           std::make_pair(2u, uint64_t{32}),
                                           std::make_pair(3u, uint64_t{64}),
                                           std::make_pair(2u, uint64_t{8}),
                                           std::make_pair(3u, uint64_t{1})));

TEST(Getters, MissingAndWrongTypeNameTheKey) {
  Parsed p = ParseBytes(AllTypesBuilder(3, 32).Build(), "getters.gguf");
  ASSERT_TRUE(p.file.ok());
  const GgufFile& f = **p.file;
  absl::StatusOr<int64_t> i = f.GetInt("nope");
  EXPECT_EQ(i.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(i.status().message()), HasSubstr("'nope'"));
  EXPECT_THAT(std::string(i.status().message()), HasSubstr("getters.gguf"));
  i = f.GetInt("str");
  EXPECT_EQ(i.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(i.status().message()), HasSubstr("'str' is string"));
  EXPECT_FALSE(f.GetString("u8").ok());
  EXPECT_FALSE(f.GetBool("u8").ok());
  EXPECT_FALSE(f.GetFloat("str").ok());
  absl::StatusOr<std::vector<std::string>> sa = f.GetStringArray("ints");
  EXPECT_THAT(std::string(sa.status().message()), HasSubstr("array of int32"));
  EXPECT_FALSE(f.GetIntArray("strs").ok());
}

TEST(Parse, EmptyFileWithoutTensors) {
  Parsed p = ParseBytes(GgufBuilder().Add("k", MakeString("v")).Build());
  ASSERT_TRUE(p.file.ok()) << p.file.status();
  EXPECT_TRUE((*p.file)->tensors().empty());
}

TEST(Parse, EveryTruncationFailsCleanly) {
  // The last tensor ends exactly at the end of the file, so every strict prefix is invalid.
  GgufBuilder b(3, 32);
  b.Add("general.architecture", MakeString("llama"))
      .Add("arr", MakeArray(ValueType::kArray,
                            {MakeArray(ValueType::kInt16, {MakeInt(ValueType::kInt16, 3)})}))
      .Add("x", MakeFloat(ValueType::kFloat64, 2.0));
  b.AddTensorF32("t0", {8}, std::vector<float>(8, 1.0f));
  b.AddTensorF32("t1", {32, 2}, std::vector<float>(64, 2.0f));
  const std::string full = b.Build();
  ASSERT_TRUE(ParseBytes(full).file.ok());
  for (size_t n = 0; n < full.size(); ++n) {
    Parsed p = ParseBytes(full.substr(0, n), "trunc.gguf");
    ASSERT_FALSE(p.file.ok()) << "prefix of " << n << " bytes parsed";
    ASSERT_THAT(std::string(p.file.status().message()), HasSubstr("trunc.gguf")) << n;
  }
}

TEST(Parse, WrongMagic) { ExpectError("GGML\3\0\0\0" + std::string(16, '\0'), {"not a GGUF"}); }

TEST(Parse, Version1IsRejectedClearly) {
  ExpectError(GgufBuilder(1).Build(), {"unsupported GGUF version 1"});
  ExpectError(GgufBuilder(4).Build(), {"unsupported GGUF version 4"});
  ExpectError(GgufBuilder(0x03000000).Build(), {"big-endian"});
}

TEST(Parse, TensorOffsetPastEnd) {
  GgufBuilder b;
  b.AddTensor("w", 0, {8}, std::string(32, '\0'), uint64_t{1} << 20);
  ExpectError(b.Build(), {"tensor 'w'", "outside the data section"});
}

TEST(Parse, TensorDataRunsPastEnd) {
  GgufBuilder b;
  b.AddTensor("w", 0, {1024}, std::string(32, '\0'));  // claims 4 KiB, holds 32 bytes
  ExpectError(b.Build(), {"tensor 'w'", "truncated"});
}

TEST(Parse, MisalignedOffset) {
  GgufBuilder b;
  b.AddTensor("w", 0, {8}, std::string(64, '\0'), 4);
  ExpectError(b.Build(), {"tensor 'w'", "offset 4", "alignment 32"});
}

TEST(Parse, AbsurdDims) {
  GgufBuilder overflow;
  overflow.AddTensor("big", 0, {int64_t{1} << 40, int64_t{1} << 40}, "");
  ExpectError(overflow.Build(), {"tensor 'big'", "overflows"});
  GgufBuilder bytes_overflow;  // elements fit int64, bytes do not
  bytes_overflow.AddTensor("big", 0, {int64_t{1} << 31, int64_t{1} << 31}, "");
  ExpectError(bytes_overflow.Build(), {"tensor 'big'", "overflows"});
  GgufBuilder zero;
  zero.AddTensor("z", 0, {4, 0}, "");
  ExpectError(zero.Build(), {"tensor 'z'", "ne[1] = 0"});
  GgufBuilder five;
  five.AddTensor("d5", 0, {1, 1, 1, 1, 1}, std::string(4, '\0'));
  ExpectError(five.Build(), {"tensor 'd5'", "n_dims 5"});
  GgufBuilder none;
  none.AddTensor("d0", 0, {}, "");
  ExpectError(none.Build(), {"tensor 'd0'", "n_dims 0"});
  GgufBuilder partial_block;
  partial_block.AddTensor("q", static_cast<uint32_t>(GgmlType::kQ4_K), {100}, "");
  ExpectError(partial_block.Build(), {"tensor 'q'", "multiple of 256", "Q4_K"});
}

TEST(Parse, UnknownQuantType) {
  GgufBuilder b;
  b.AddTensor("blk.0.attn_q.weight", 99, {32}, std::string(32, '\0'));
  ExpectError(b.Build(), {"tensor 'blk.0.attn_q.weight'", "unknown ggml type id 99"});
}

TEST(Parse, HugeCounts) {
  {
    GgufBuilder b;  // array claims 2^60 elements
    b.Add("tokenizer.ggml.tokens", MakeArray(ValueType::kString, {MakeString("a")}));
    std::string bytes = b.Build();
    const size_t at = bytes.find("tokenizer.ggml.tokens") + 21 + 4 + 4;  // key, type, elem type
    const uint64_t huge = uint64_t{1} << 60;
    std::memcpy(&bytes[at], &huge, 8);
    ExpectError(bytes, {"metadata 'tokenizer.ggml.tokens'", "array count"});
  }
  {
    GgufBuilder b;  // string length past the end
    b.Add("general.name", MakeString("abc"));
    std::string bytes = b.Build();
    const size_t at = bytes.find("general.name") + 12 + 4;
    const uint64_t huge = uint64_t{1} << 50;
    std::memcpy(&bytes[at], &huge, 8);
    ExpectError(bytes, {"metadata 'general.name'", "string length"});
  }
  {
    std::string bytes = GgufBuilder().Build();
    const uint64_t huge = uint64_t{1} << 40;
    std::memcpy(&bytes[8], &huge, 8);
    ExpectError(bytes, {"tensor_count"});
    bytes = GgufBuilder().Build();
    std::memcpy(&bytes[16], &huge, 8);
    ExpectError(bytes, {"metadata_kv_count"});
  }
}

TEST(Parse, BadAlignment) {
  GgufBuilder b(3, 32);
  b.Add("general.alignment", MakeUint(ValueType::kUint32, 48));
  ExpectError(b.Build(), {"general.alignment", "power of two"});
  GgufBuilder z(3, 32);
  z.Add("general.alignment", MakeUint(ValueType::kUint32, 0));
  ExpectError(z.Build(), {"general.alignment"});
  GgufBuilder s(3, 32);
  s.Add("general.alignment", MakeString("32"));
  ExpectError(s.Build(), {"general.alignment", "expected an integer"});
}

TEST(Parse, DuplicatesAndBadValues) {
  GgufBuilder dup_key;
  dup_key.Add("k", MakeUint(ValueType::kUint8, 1)).Add("k", MakeUint(ValueType::kUint8, 2));
  ExpectError(dup_key.Build(), {"metadata 'k'", "duplicate"});
  GgufBuilder dup_tensor;
  dup_tensor.AddTensorF32("t", {8}, std::vector<float>(8))
      .AddTensorF32("t", {8}, std::vector<float>(8));
  ExpectError(dup_tensor.Build(), {"tensor 't'", "duplicate"});
  GgufBuilder bad_bool;
  bad_bool.Add("flag", MakeUint(ValueType::kBool, 2));
  ExpectError(bad_bool.Build(), {"metadata 'flag'", "bool"});
  GgufBuilder bad_type;
  bad_type.Add("weird", MakeUint(ValueType::kUint8, 1));
  std::string bytes = bad_type.Build();
  const uint32_t t13 = 13;
  std::memcpy(&bytes[bytes.find("weird") + 5], &t13, 4);
  ExpectError(bytes, {"metadata 'weird'", "unknown value type 13"});
}

TEST(Parse, DeeplyNestedArraysAreRejected) {
  Value v = MakeArray(ValueType::kUint8, {});
  for (int i = 0; i < 40; ++i) v = MakeArray(ValueType::kArray, {v});
  GgufBuilder b;
  b.Add("deep", v);
  ExpectError(b.Build(), {"metadata 'deep'", "nested deeper"});
}

TEST(Open, MissingFileNamesThePath) {
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open("/nonexistent/x.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("/nonexistent/x.gguf"));
}

}  // namespace
}  // namespace resa::gguf
