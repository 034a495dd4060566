#include "runtime/model/ggml_types.h"

#include <array>
#include <cstring>
#include <limits>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>  // hardware half -> float for F16 rows
#endif

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa {
namespace {

constexpr int64_t kQK = 32;    // elements per block of the legacy quants
constexpr int64_t kQKK = 256;  // elements per super-block of the K-quants

struct TraitsEntry {
  uint32_t id;
  GgmlTypeTraits traits;
};

// Types this build knows the block size of. Types listed with dequantizable = false can be
// parsed (so a file holding them still opens and its metadata is readable) but not read as fp32.
constexpr std::array<TraitsEntry, 31> kTraits = {{
    {0, {"F32", 1, 4, true}},           {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", kQK, 18, true}},       {3, {"Q4_1", kQK, 20, true}},
    {6, {"Q5_0", kQK, 22, true}},       {7, {"Q5_1", kQK, 24, true}},
    {8, {"Q8_0", kQK, 34, true}},       {9, {"Q8_1", kQK, 36, false}},
    {10, {"Q2_K", kQKK, 84, true}},     {11, {"Q3_K", kQKK, 110, true}},
    {12, {"Q4_K", kQKK, 144, true}},    {13, {"Q5_K", kQKK, 176, true}},
    {14, {"Q6_K", kQKK, 210, true}},    {15, {"Q8_K", kQKK, 292, true}},
    {16, {"IQ2_XXS", kQKK, 66, false}}, {17, {"IQ2_XS", kQKK, 74, false}},
    {18, {"IQ3_XXS", kQKK, 98, false}}, {19, {"IQ1_S", kQKK, 50, false}},
    {20, {"IQ4_NL", kQK, 18, false}},   {21, {"IQ3_S", kQKK, 110, false}},
    {22, {"IQ2_S", kQKK, 82, false}},   {23, {"IQ4_XS", kQKK, 136, false}},
    {24, {"I8", 1, 1, false}},          {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},         {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, true}},          {29, {"IQ1_M", kQKK, 56, false}},
    {30, {"BF16", 1, 2, true}},         {34, {"TQ1_0", kQKK, 54, false}},
    {35, {"TQ2_0", kQKK, 66, false}},
}};

const GgmlTypeTraits* LookupTraits(uint32_t id) {
  for (const TraitsEntry& e : kTraits) {
    if (e.id == id) return &e.traits;
  }
  return nullptr;
}

inline uint32_t F32Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float F32FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline float LoadHalf(const uint8_t* p) { return HalfToFloat(LoadU16(p)); }

// ---- legacy 32-element blocks -------------------------------------------------------------

void DequantQ4_0(const uint8_t* b, float* y) {  // d | qs[16]
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void DequantQ4_1(const uint8_t* b, float* y) {  // d | m | qs[16]
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// Fifth bits: bit j of the little-endian word qh belongs to element j (j < 32).
void DequantQ5_0(const uint8_t* b, float* y) {  // d | qh[4] | qs[16]
  const float d = LoadHalf(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    y[j] = d * static_cast<float>(((qs[j] & 0x0F) | hi0) - 16);
    y[j + 16] = d * static_cast<float>(((qs[j] >> 4) | hi1) - 16);
  }
}

void DequantQ5_1(const uint8_t* b, float* y) {  // d | m | qh[4] | qs[16]
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    y[j] = d * static_cast<float>((qs[j] & 0x0F) | hi0) + m;
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) | hi1) + m;
  }
}

void DequantQ8_0(const uint8_t* b, float* y) {  // d | qs[32] (int8)
  const float d = LoadHalf(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(qs[j]);
}

// ---- K-quants: 256-element super-blocks -----------------------------------------------------

// 6-bit scale and min of sub-block j (0..7) packed in 12 bytes (Q4_K, Q5_K).
inline void ScaleMinK4(int j, const uint8_t* q, float* sc, float* mn) {
  if (j < 4) {
    *sc = static_cast<float>(q[j] & 63);
    *mn = static_cast<float>(q[j + 4] & 63);
  } else {
    *sc = static_cast<float>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *mn = static_cast<float>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void DequantQ2_K(const uint8_t* b, float* y) {  // scales[16] | qs[64] | d | dmin
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = LoadHalf(b + 80);
  const float dmin = LoadHalf(b + 82);
  int is = 0;
  for (int half = 0; half < 2; ++half, q += 32) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int k = 0; k < 2; ++k) {
        const uint8_t sc = scales[is++];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        const uint8_t* qq = q + 16 * k;
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * static_cast<float>((qq[l] >> shift) & 3) - ml;
        }
      }
    }
  }
}

void DequantQ3_K(const uint8_t* b, float* y) {  // hmask[32] | qs[64] | scales[12] | d
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* s = b + 96;
  const float d = LoadHalf(b + 108);
  // 16 signed 6-bit scales: low nibble from s[0..7] (low then high nibbles), top 2 bits from
  // s[8..11].
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int lo = i < 8 ? (s[i] & 0x0F) : (s[i - 8] >> 4);
    const int hi = (s[8 + (i % 4)] >> (2 * (i / 4))) & 3;
    dl[i] = d * static_cast<float>((lo | (hi << 4)) - 32);
  }
  int is = 0;
  int bit = 0;  // bit of hmask[l] that holds the high bit of the current 32-element group
  for (int half = 0; half < 2; ++half, q += 32) {
    for (int shift = 0; shift < 8; shift += 2, ++bit) {
      for (int k = 0; k < 2; ++k) {
        const float scale = dl[is++];
        const uint8_t* qq = q + 16 * k;
        const uint8_t* hh = hm + 16 * k;
        for (int l = 0; l < 16; ++l) {
          const int low = (qq[l] >> shift) & 3;
          const int sub = ((hh[l] >> bit) & 1) ? 0 : 4;
          *y++ = scale * static_cast<float>(low - sub);
        }
      }
    }
  }
}

void DequantQ4_K(const uint8_t* b, float* y) {  // d | dmin | scales[12] | qs[128]
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0; j < 8; j += 2, q += 32) {
    float sc0, m0, sc1, m1;
    ScaleMinK4(j, scales, &sc0, &m0);
    ScaleMinK4(j + 1, scales, &sc1, &m1);
    const float d0 = d * sc0, dm0 = dmin * m0;
    const float d1 = d * sc1, dm1 = dmin * m1;
    for (int l = 0; l < 32; ++l) y[l] = d0 * static_cast<float>(q[l] & 0x0F) - dm0;
    for (int l = 0; l < 32; ++l) y[l + 32] = d1 * static_cast<float>(q[l] >> 4) - dm1;
    y += 64;
  }
}

void DequantQ5_K(const uint8_t* b, float* y) {  // d | dmin | scales[12] | qh[32] | qs[128]
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* q = b + 48;
  for (int j = 0; j < 8; j += 2, q += 32) {
    float sc0, m0, sc1, m1;
    ScaleMinK4(j, scales, &sc0, &m0);
    ScaleMinK4(j + 1, scales, &sc1, &m1);
    const float d0 = d * sc0, dm0 = dmin * m0;
    const float d1 = d * sc1, dm1 = dmin * m1;
    for (int l = 0; l < 32; ++l) {
      const int v = (q[l] & 0x0F) | (((qh[l] >> j) & 1) << 4);
      y[l] = d0 * static_cast<float>(v) - dm0;
    }
    for (int l = 0; l < 32; ++l) {
      const int v = (q[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4);
      y[l + 32] = d1 * static_cast<float>(v) - dm1;
    }
    y += 64;
  }
}

void DequantQ6_K(const uint8_t* b, float* y) {  // ql[128] | qh[64] | scales[16] (int8) | d
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadHalf(b + 208);
  // Each 128-element half: element l + 32k (k = 0..3) takes nibble k/2 of ql[l + 32(k%2)] and
  // bits 2k..2k+1 of qh[l]; scale index is (l / 16) + 2k.
  for (int half = 0; half < 2; ++half) {
    for (int k = 0; k < 4; ++k) {
      const uint8_t* lo = ql + 32 * (k % 2);
      const int nib = 4 * (k / 2);
      for (int g = 0; g < 2; ++g) {
        const float ds = d * static_cast<float>(sc[g + 2 * k]);
        for (int l = 16 * g; l < 16 * g + 16; ++l) {
          const int q = (((lo[l] >> nib) & 0x0F) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
          y[32 * k + l] = ds * static_cast<float>(q);
        }
      }
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void DequantQ8_K(const uint8_t* b, float* y) {  // d (f32) | qs[256] (int8) | bsums[16] (int16)
  float d;
  std::memcpy(&d, b, 4);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < 256; ++j) y[j] = d * static_cast<float>(qs[j]);
}

template <void (*Block)(const uint8_t*, float*)>
void DequantBlocks(const uint8_t* src, float* dst, int64_t nblocks, size_t block_bytes,
                   int64_t block_elems) {
  for (int64_t i = 0; i < nblocks; ++i) {
    Block(src + static_cast<size_t>(i) * block_bytes, dst + i * block_elems);
  }
}

}  // namespace

absl::StatusOr<GgmlTypeTraits> TraitsOf(uint32_t type_id) {
  const GgmlTypeTraits* t = LookupTraits(type_id);
  if (t == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown ggml type id ", type_id));
  }
  return *t;
}

absl::StatusOr<uint64_t> RowBytes(GgmlType type, int64_t n) {
  const GgmlTypeTraits* t = LookupTraits(static_cast<uint32_t>(type));
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown ggml type id ", static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % t->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrCat(n, " elements of type ", AsAbsl(t->name),
                                                   " is not a whole number of ", t->block_elems,
                                                   "-element blocks"));
  }
  const uint64_t blocks = static_cast<uint64_t>(n / t->block_elems);
  if (blocks > std::numeric_limits<uint64_t>::max() / t->block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("size of ", n, " elements of type ", AsAbsl(t->name), " overflows"));
  }
  return blocks * t->block_bytes;
}

absl::Status DequantizeRow(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  const GgmlTypeTraits* t = LookupTraits(static_cast<uint32_t>(type));
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown ggml type id ", static_cast<uint32_t>(type)));
  }
  if (n < 0 || n % t->block_elems != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot dequantize ", n, " elements of type ",
                                                   AsAbsl(t->name), ": not a whole number of ",
                                                   t->block_elems, "-element blocks"));
  }
  if (n == 0) return absl::OkStatus();
  const int64_t nb = n / t->block_elems;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return absl::OkStatus();
    case GgmlType::kF16: {
      int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
      for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
      }
#endif
      for (; i < n; ++i) dst[i] = HalfToFloat(LoadU16(src + 2 * i));
      return absl::OkStatus();
    }
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(LoadU16(src + 2 * i));
      return absl::OkStatus();
    case GgmlType::kQ4_0:
      DequantBlocks<DequantQ4_0>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ4_1:
      DequantBlocks<DequantQ4_1>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ5_0:
      DequantBlocks<DequantQ5_0>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ5_1:
      DequantBlocks<DequantQ5_1>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ8_0:
      DequantBlocks<DequantQ8_0>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ2_K:
      DequantBlocks<DequantQ2_K>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ3_K:
      DequantBlocks<DequantQ3_K>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ4_K:
      DequantBlocks<DequantQ4_K>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ5_K:
      DequantBlocks<DequantQ5_K>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ6_K:
      DequantBlocks<DequantQ6_K>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    case GgmlType::kQ8_K:
      DequantBlocks<DequantQ8_K>(src, dst, nb, t->block_bytes, t->block_elems);
      return absl::OkStatus();
    default:
      break;
  }
  if (static_cast<uint32_t>(type) == 28) {  // F64
    for (int64_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, src + 8 * i, 8);
      dst[i] = static_cast<float>(v);
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat("dequantization of ggml type ", AsAbsl(t->name), " (id ",
                                               static_cast<uint32_t>(type),
                                               ") is not supported by this build"));
}

// Branch-free half -> float: normal numbers are rebiased by a multiply (which also yields inf and
// NaN from the max exponent), subnormals are rebuilt by a subtraction of a magic constant.
float HalfToFloat(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // drops the sign
  const float normal = F32FromBits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = F32FromBits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t bits = two_w < (1u << 27) ? F32Bits(subnormal) : F32Bits(normal);
  return F32FromBits(sign | bits);
}

uint16_t FloatToHalf(float f) {
  uint32_t x = F32Bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) {  // inf or NaN (NaN stays quiet)
    return static_cast<uint16_t>(sign | (x > 0x7F800000u ? 0x7E00u : 0x7C00u));
  }
  if (x >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (x >= 0x38800000u) {  // normal half: rebias the exponent, round mantissa to nearest even
    const uint32_t r = x - 0x38000000u;
    return static_cast<uint16_t>(sign | ((r + 0x0FFFu + ((r >> 13) & 1u)) >> 13));
  }
  if (x < 0x33000000u) return sign;  // below half the smallest subnormal: rounds to zero
  // Subnormal half: value = m * 2^(e - 150) = h * 2^-24, so h = m >> (126 - e), rounded.
  const uint32_t e = x >> 23;
  const uint32_t m = (x & 0x007FFFFFu) | 0x00800000u;
  const uint32_t shift = 126u - e;  // 14..24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float Bf16ToFloat(uint16_t b) { return F32FromBits(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBf16(float f) {
  const uint32_t x = F32Bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep the sign, force quiet
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace resa
