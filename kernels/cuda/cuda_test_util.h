// Helpers for the CUDA kernel tests: device detection (tests SKIP visibly without a GPU), RAII
// device buffers, bf16 conversions, and paged caches built identically for the CPU twin (fp32)
// and the GPU (bf16), so only accumulation differs between the two.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/paged_kv.h"
#include "kernels/cpu/selection.h"
#include "kernels/cuda/paged_kv_cuda.h"

namespace resa::cuda::testing {

// Empty when a CUDA device is usable, else why not.
inline std::string NoDeviceReason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  }
  if (n == 0) return "cudaGetDeviceCount reports 0 devices";
  return "";
}

// Fixture base: every test of a derived fixture skips with the reason when there is no GPU.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = NoDeviceReason();
    if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  }
};

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { Resize(n); }
  explicit DeviceBuffer(const std::vector<T>& host) {
    Resize(host.size());
    Upload(host);
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void Resize(size_t n) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = n;
    if (n > 0) {
      EXPECT_EQ(cudaMalloc(&ptr_, n * sizeof(T)), cudaSuccess);
    }
  }
  void Upload(const std::vector<T>& host) {
    ASSERT_LE(host.size(), size_);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> host(size_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, size_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return host;
  }
  void Fill(uint8_t byte) { EXPECT_EQ(cudaMemset(ptr_, byte, size_ * sizeof(T)), cudaSuccess); }
  T* get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

inline uint16_t ToBf16(float f) {  // round to nearest even (inputs here are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float FromBf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float RoundBf16(float f) { return FromBf16(ToBf16(f)); }
inline std::vector<uint16_t> ToBf16(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = ToBf16(x[i]);
  return y;
}
inline __nv_bfloat16* AsBf16(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* AsBf16(const uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}

// Index of summary element (page, h, part, i) in the CPU layout [num_pages][hkv][2][d]
// (kernels/cpu/paged_kv.h; part 0 = min, 1 = max).
inline size_t CpuSummaryIndex(int32_t page, int h, int part, int i, int hkv, int d) {
  return ((size_t(page) * hkv + h) * 2 + part) * d + i;
}

// A summary pool in the CPU layout (fp32 holding bf16 values, num_pages = size / (hkv * 2 * d)
// pages) as bf16 bits in the device layout of paged_kv_cuda.h (SummaryIndex),
// SummaryPoolElems(num_pages) elements: the same values, so kernels' device summaries compare
// bit for bit with it. The slots of the pages that round the pool up to a whole group are NaN.
inline std::vector<uint16_t> ToDeviceSummary(const std::vector<float>& summary, int hkv, int d) {
  const int32_t num_pages = int32_t(summary.size() / (size_t(hkv) * 2 * d));
  std::vector<uint16_t> out(SummaryPoolElems(num_pages, hkv, d), 0x7fc0);
  for (int32_t page = 0; page < num_pages; ++page) {
    for (int h = 0; h < hkv; ++h) {
      for (int part = 0; part < 2; ++part) {
        for (int i = 0; i < d; ++i) {
          out[SummaryIndex(page, h, part, i, hkv, d)] =
              ToBf16(summary[CpuSummaryIndex(page, h, part, i, hkv, d)]);
        }
      }
    }
  }
  return out;
}

// Element (page, h, part, i) of a device-layout summary pool (bf16 bits, e.g. downloaded).
inline float DeviceSummary(const std::vector<uint16_t>& bits, int32_t page, int h, int part, int i,
                           int hkv, int d) {
  return FromBf16(bits[SummaryIndex(page, h, part, i, hkv, d)]);
}

// The first num_pages pages of a device-layout summary pool (bf16 bits) in the CPU layout
// [num_pages][hkv][2][d], fp32.
inline std::vector<float> FromDeviceSummary(const std::vector<uint16_t>& bits, int32_t num_pages,
                                            int hkv, int d) {
  std::vector<float> out(size_t(num_pages) * hkv * 2 * d);
  for (int32_t page = 0; page < num_pages; ++page) {
    for (int h = 0; h < hkv; ++h) {
      for (int part = 0; part < 2; ++part) {
        for (int i = 0; i < d; ++i) {
          out[CpuSummaryIndex(page, h, part, i, hkv, d)] =
              DeviceSummary(bits, page, h, part, i, hkv, d);
        }
      }
    }
  }
  return out;
}

// How BuildCache lays sequences' blocks on pages.
//   kShuffled: pages shuffled across sequences, so a sequence's 64 consecutive blocks (almost)
//              never fill one aligned summary group: the selection's general (slow) path.
//   kGrouped:  each sequence takes whole aligned groups of kSummaryGroup pages, its block j on
//              page kSummaryGroup * group(j / kSummaryGroup) + j % kSummaryGroup, the groups
//              shuffled across sequences (as DeviceKvCache hands pages out): the fast path.
enum class PageOrder { kShuffled, kGrouped };

inline const char* PageOrderName(PageOrder order) {
  return order == PageOrder::kGrouped ? "grouped" : "shuffled";
}

// Sequences of the given lengths in one page pool (pages laid out by a PageOrder). Host fp32
// (the CPU twin's view, CPU summary layout) and device bf16 (device summary layout,
// paged_kv_cuda.h) hold the same values; unused slots of the device K/V pools and the summaries
// of pages no sequence's table holds are NaN, so any kernel that reads past a sequence's end
// fails loudly.
struct TestCache {
  int hkv = 0, d = 0;
  std::vector<int32_t> lens;
  int page_table_stride = 0;
  std::vector<int32_t> page_tables;  // [seq][stride]
  std::vector<float> k, v, summary;  // host pools; summary [num_pages][hkv][2][d]
  PagedKvLayer cpu;
  // Device pools; dsummary [num_pages / 16][hkv][2][d][16] (SummaryPoolElems elements).
  DeviceBuffer<uint16_t> dk, dv, dsummary;
  DeviceBuffer<int32_t> dtables, dlens;

  PagedKvCuda gpu() const {
    return PagedKvCuda{AsBf16(dk.get()), AsBf16(dv.get()), AsBf16(dsummary.get()), hkv, d,
                       num_pages()};
  }
  int32_t num_pages() const { return int32_t(dk.size() / (size_t(hkv) * kPageTokens * d)); }
  int32_t max_len() const { return *std::max_element(lens.begin(), lens.end()); }
  const int32_t* table(size_t s) const { return page_tables.data() + s * page_table_stride; }
};

// `value(rng)` draws each K/V element; written_upto[s] (default: all) tokens are written. Each
// sequence's table holds ceil(len / 16) + extra_pages pages; with kGrouped the pool also has
// the unused pages that complete each sequence's last group.
template <typename Draw>
void BuildCache(TestCache& c, int hkv, int d, const std::vector<int32_t>& lens, uint32_t seed,
                Draw draw, const std::vector<int32_t>* written_upto = nullptr, int extra_pages = 1,
                PageOrder order = PageOrder::kShuffled) {
  c.hkv = hkv;
  c.d = d;
  c.lens = lens;
  std::mt19937 rng(seed);
  int32_t max_pages = 1, total_pages = 0, total_groups = 0;
  std::vector<int32_t> seq_pages;
  for (int32_t len : lens) {
    const int32_t pages = (len + kPageTokens - 1) / kPageTokens + extra_pages;
    seq_pages.push_back(pages);
    max_pages = std::max(max_pages, pages);
    total_pages += pages;
    total_groups += (pages + kSummaryGroup - 1) / kSummaryGroup;
  }
  c.page_table_stride = max_pages;
  c.page_tables.assign(size_t(lens.size()) * max_pages, 0);
  if (order == PageOrder::kShuffled) {
    std::vector<int32_t> perm(total_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    int32_t next = 0;
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int32_t i = 0; i < seq_pages[s]; ++i) c.page_tables[s * max_pages + i] = perm[next++];
    }
  } else {
    total_pages = total_groups * kSummaryGroup;
    std::vector<int32_t> perm(total_groups);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    int32_t next = 0;  // the sequence's first group in perm
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int32_t i = 0; i < seq_pages[s]; ++i) {
        c.page_tables[s * max_pages + i] =
            perm[next + i / kSummaryGroup] * kSummaryGroup + i % kSummaryGroup;
      }
      next += (seq_pages[s] + kSummaryGroup - 1) / kSummaryGroup;
    }
  }
  const size_t page_elems = size_t(hkv) * kPageTokens * d;
  c.k.assign(size_t(total_pages) * page_elems, 0.0f);
  c.v.assign(c.k.size(), 0.0f);
  c.summary.assign(size_t(total_pages) * hkv * 2 * d, 0.0f);
  c.cpu = PagedKvLayer{c.k.data(), c.v.data(), c.summary.data(), hkv, d};
  std::vector<uint16_t> hk(c.k.size(), 0x7fc0), hv(c.k.size(), 0x7fc0);  // NaN = never written
  std::vector<float> kt(size_t(hkv) * d), vt(size_t(hkv) * d);
  for (size_t s = 0; s < lens.size(); ++s) {
    const int32_t upto = written_upto != nullptr ? (*written_upto)[s] : lens[s];
    for (int32_t t = 0; t < upto; ++t) {
      for (auto& x : kt) x = RoundBf16(draw(rng));
      for (auto& x : vt) x = RoundBf16(draw(rng));
      const int32_t page = c.table(s)[t / kPageTokens];
      WriteTokenKv(c.cpu, page, t % kPageTokens, kt.data(), vt.data());
      for (int h = 0; h < hkv; ++h) {
        const size_t off = (size_t(page) * hkv + h) * kPageTokens * d + size_t(t % kPageTokens) * d;
        for (int i = 0; i < d; ++i) {
          hk[off + i] = ToBf16(kt[size_t(h) * d + i]);
          hv[off + i] = ToBf16(vt[size_t(h) * d + i]);
        }
      }
    }
  }
  // Device summaries: the host ones (zero for unwritten pages of a table, as on the host), NaN
  // for pages no table holds.
  std::vector<bool> used(size_t(total_pages), false);
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int32_t i = 0; i < seq_pages[s]; ++i) used[size_t(c.table(s)[i])] = true;
  }
  std::vector<uint16_t> hs = ToDeviceSummary(c.summary, hkv, d);
  for (int32_t page = 0; page < total_pages; ++page) {
    if (used[size_t(page)]) continue;
    for (int h = 0; h < hkv; ++h) {
      for (int part = 0; part < 2; ++part) {
        for (int i = 0; i < d; ++i) hs[SummaryIndex(page, h, part, i, hkv, d)] = 0x7fc0;
      }
    }
  }
  c.dk.Resize(hk.size());
  c.dk.Upload(hk);
  c.dv.Resize(hv.size());
  c.dv.Upload(hv);
  c.dsummary.Resize(hs.size());
  c.dsummary.Upload(hs);
  c.dtables.Resize(c.page_tables.size());
  c.dtables.Upload(c.page_tables);
  c.dlens.Resize(lens.size());
  c.dlens.Upload(lens);
}

inline std::vector<float> RandomBf16Values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = RoundBf16(nd(rng));
  return x;
}

}  // namespace resa::cuda::testing
