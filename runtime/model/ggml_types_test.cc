#include "runtime/model/ggml_types.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace resa {
namespace {

std::string TestDataPath(const std::string& name) {
  return std::string(RESA_MODEL_TESTDATA) + "/" + name;
}

struct Record {
  uint32_t type_id = 0;
  std::vector<uint8_t> raw;
  std::vector<float> expected;
};

// Reads quant_vectors.bin (format in testdata/make_quant_vectors.py).
std::vector<Record> ReadVectors() {
  std::ifstream in(TestDataPath("quant_vectors.bin"), std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<Record> out;
  size_t pos = 0;
  auto u32 = [&]() {
    uint32_t v = 0;
    if (pos + 4 <= bytes.size()) std::memcpy(&v, bytes.data() + pos, 4);
    pos += 4;
    return v;
  };
  if (bytes.size() < 8 || std::memcmp(bytes.data(), "RQV1", 4) != 0) return out;
  pos = 4;
  const uint32_t count = u32();
  for (uint32_t i = 0; i < count && pos < bytes.size(); ++i) {
    Record r;
    r.type_id = u32();
    const uint32_t n = u32(), nbytes = u32();
    if (pos + nbytes + 4ull * n > bytes.size()) break;
    r.raw.assign(bytes.begin() + static_cast<long>(pos),
                 bytes.begin() + static_cast<long>(pos + nbytes));
    pos += nbytes;
    r.expected.resize(n);
    std::memcpy(r.expected.data(), bytes.data() + pos, 4ull * n);
    pos += 4ull * n;
    out.push_back(std::move(r));
  }
  return out;
}

TEST(DequantizeRow, MatchesGgufPyOnEveryType) {
  const std::vector<Record> records = ReadVectors();
  ASSERT_EQ(records.size(), 13u) << "testdata/quant_vectors.bin missing or malformed; run "
                                    "testdata/make_quant_vectors.py";
  std::vector<std::string> seen;
  for (const Record& r : records) {
    absl::StatusOr<GgmlTypeTraits> traits = TraitsOf(r.type_id);
    ASSERT_TRUE(traits.ok()) << traits.status();
    SCOPED_TRACE(std::string(traits->name));
    seen.emplace_back(traits->name);
    const GgmlType type = static_cast<GgmlType>(r.type_id);
    const int64_t n = static_cast<int64_t>(r.expected.size());
    absl::StatusOr<uint64_t> bytes = RowBytes(type, n);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, r.raw.size());
    std::vector<float> got(r.expected.size(), -12345.0f);
    ASSERT_TRUE(DequantizeRow(type, r.raw.data(), got.data(), n).ok());
    float max_abs = 0.0f;
    for (float v : r.expected) {
      if (std::isfinite(v)) max_abs = std::max(max_abs, std::fabs(v));
    }
    // Exact up to the order of the fp32 multiply-adds (FMA contraction may differ from numpy).
    const float atol = 2e-6f * max_abs;
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const float e = r.expected[i];
      const bool ok = std::isnan(e)   ? std::isnan(got[i])
                      : std::isinf(e) ? got[i] == e
                                      : std::fabs(got[i] - e) <= atol + 1e-6f * std::fabs(e);
      if (!ok && ++bad <= 5)
        ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << e;
    }
    EXPECT_EQ(bad, 0);
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                            "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}));
}

TEST(DequantizeRow, Q4_0ExactSmallIntegers) {
  uint8_t block[18];
  const uint16_t one = FloatToHalf(1.0f);
  std::memcpy(block, &one, 2);
  for (int j = 0; j < 16; ++j) block[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  ASSERT_TRUE(DequantizeRow(GgmlType::kQ4_0, block, y, 32).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], static_cast<float>(j - 8));
    EXPECT_EQ(y[j + 16], static_cast<float>(7 - j));
  }
}

TEST(DequantizeRow, Q8_KByConstruction) {
  std::vector<uint8_t> block(292, 0);
  const float d = 0.5f;
  std::memcpy(block.data(), &d, 4);
  for (int j = 0; j < 256; ++j) block[4 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 128));
  std::vector<float> y(256);
  ASSERT_TRUE(DequantizeRow(GgmlType::kQ8_K, block.data(), y.data(), 256).ok());
  for (int j = 0; j < 256; ++j) EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 128));
}

TEST(DequantizeRow, RejectsPartialBlocksAndUnsupportedTypes) {
  std::vector<uint8_t> src(1024, 0);
  std::vector<float> dst(512);
  absl::Status st = DequantizeRow(GgmlType::kQ4_K, src.data(), dst.data(), 100);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Q4_K"), std::string::npos) << st;
  st = DequantizeRow(static_cast<GgmlType>(16), src.data(), dst.data(), 256);  // IQ2_XXS
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("IQ2_XXS"), std::string::npos) << st;
  st = DequantizeRow(static_cast<GgmlType>(99), src.data(), dst.data(), 32);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("99"), std::string::npos) << st;
}

TEST(TraitsOf, KnownAndUnknownIds) {
  absl::StatusOr<GgmlTypeTraits> t = TraitsOf(12);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->name, "Q4_K");
  EXPECT_EQ(t->block_elems, 256);
  EXPECT_EQ(t->block_bytes, 144u);
  EXPECT_TRUE(t->dequantizable);
  EXPECT_FALSE(TraitsOf(4).ok());  // Q4_2, removed from ggml
  EXPECT_FALSE(TraitsOf(1000).ok());
}

TEST(RowBytes, SizesAndErrors) {
  EXPECT_EQ(*RowBytes(GgmlType::kQ4_1, 576), 18u * 20u);
  EXPECT_EQ(*RowBytes(GgmlType::kQ6_K, 1536), 6u * 210u);
  EXPECT_EQ(*RowBytes(GgmlType::kBF16, 3), 6u);
  EXPECT_FALSE(RowBytes(GgmlType::kQ8_0, 33).ok());
  EXPECT_FALSE(RowBytes(GgmlType::kF32, int64_t{1} << 62).ok());  // overflows
}

// Reference half -> float with ldexp, obviously right.
float RefHalfToFloat(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    v = man == 0 ? INFINITY : NAN;
  } else {
    v = std::ldexp(static_cast<float>(man | 1024), exp - 25);
  }
  return sign ? -v : v;
}

TEST(Half, AllBitPatternsConvertAndRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    const float ref = RefHalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << h;
      continue;
    }
    ASSERT_EQ(std::memcmp(&f, &ref, 4), 0) << "half 0x" << std::hex << h;
    ASSERT_EQ(FloatToHalf(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(Half, RoundsToNearestEven) {
  // Between every pair of adjacent finite halves: the midpoint goes to the even one, anything
  // above it up, anything below it down (including into inf past 65504 and out of subnormals).
  for (uint16_t h = 0; h < 0x7BFF + 1; ++h) {
    const uint16_t next = static_cast<uint16_t>(h + 1);
    const double lo = RefHalfToFloat(h);
    const double hi = next == 0x7C00 ? 65536.0 : RefHalfToFloat(next);
    const float mid = static_cast<float>((lo + hi) / 2);  // exact in fp32
    const uint16_t even = (h & 1) ? next : h;
    ASSERT_EQ(FloatToHalf(mid), even) << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, INFINITY)), next) << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 0.0f)), h) << h;
    ASSERT_EQ(FloatToHalf(-mid), even | 0x8000) << h;
  }
  EXPECT_EQ(FloatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-INFINITY), 0xFC00);
  EXPECT_EQ(FloatToHalf(1e-30f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
}

TEST(Bf16, ConversionAndRounding) {
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  uint32_t bits = 0x3F808000;  // exactly halfway between 0x3F80 and 0x3F81: to even
  float f;
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(FloatToBf16(f), 0x3F80);
  bits = 0x3F818000;  // halfway between 0x3F81 and 0x3F82: to even
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(FloatToBf16(f), 0x3F82);
  bits = 0x3F808001;
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(FloatToBf16(f), 0x3F81);
  EXPECT_EQ(FloatToBf16(INFINITY), 0x7F80);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  bits = 0x7F800001;  // signalling NaN must stay NaN, not become inf
  std::memcpy(&f, &bits, 4);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(f))));
  for (uint32_t b = 0; b < 65536; ++b) {
    const float v = Bf16ToFloat(static_cast<uint16_t>(b));
    if (!std::isnan(v)) {
      ASSERT_EQ(FloatToBf16(v), b);
    }
  }
}

}  // namespace
}  // namespace resa
