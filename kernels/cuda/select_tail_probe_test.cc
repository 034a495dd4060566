// The selection tail on keys built to take each of its paths (select_tail_probe.h): every form
// must return exactly SelectTailReference's ids, and its hint must have at least hint_rank keys
// at or above it. The paths: one radix pass (narrow keys), the first pass's pivot bin ranked
// directly (small) or compacted and narrowed by 8-bit passes over the candidates (one, two,
// down to the last bit), too large to compact (more passes over all keys), all keys equal; the
// candidate tail taking or declining its candidates; and the histogram tail placing the
// threshold (its pivot bin kept whole or ranked) or declining (pivot bin too large, or the top
// bin), at the shift a real step would leave and at others.
#include "kernels/cuda/select_tail_probe.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_test_util.h"

namespace resa::cuda {
namespace {

struct KeySet {
  std::string name;
  std::vector<uint32_t> keys;
  uint32_t need;
};

// mo keys: `above` keys in the bins over the pivot bin, `pivot` keys in it, the rest below, with
// the first pass over bits [lo, lo + 11) (keys span [0, 2^(lo + 11))). In the pivot bin the bits
// from `same_lo` up to lo are one value, the bits below same_lo random: the 8-bit passes over
// the candidates find them all in one bin until they reach same_lo.
std::vector<uint32_t> PivotKeys(int32_t mo, int32_t above, int32_t pivot, int lo, int same_lo,
                                std::mt19937& rng) {
  const uint32_t pivot_bin = 1000;
  const uint64_t span = uint64_t(1) << lo;
  const uint32_t same = uint32_t(rng()) & uint32_t(span - 1) & ~((uint32_t(1) << same_lo) - 1u);
  std::vector<uint32_t> keys;
  keys.push_back(uint32_t((uint64_t(2048) << lo) - 1));  // the largest key: lo + 11 bits
  keys.push_back(0);                                     // and the smallest
  for (int32_t i = 0; i < above - 1; ++i) {
    const uint32_t bin = pivot_bin + 1 + uint32_t(rng() % (2047 - pivot_bin));
    keys.push_back(uint32_t(bin << lo) | (uint32_t(rng()) & uint32_t(span - 1)));
  }
  for (int32_t i = 0; i < pivot; ++i) {
    const uint32_t low = same_lo > 0 ? uint32_t(rng()) & ((uint32_t(1) << same_lo) - 1u) : 0u;
    keys.push_back(uint32_t(pivot_bin << lo) | same | low);
  }
  while (int32_t(keys.size()) < mo) {
    keys.push_back(uint32_t(uint32_t(rng() % pivot_bin) << lo) |
                   (uint32_t(rng()) & uint32_t(span - 1)));
  }
  std::shuffle(keys.begin(), keys.end(), rng);
  return keys;
}

std::vector<KeySet> KeySets() {
  std::mt19937 rng(11);
  std::vector<KeySet> sets;
  for (int32_t mo : {2, 17, 4097, 16384}) {
    std::vector<uint32_t> k(size_t(mo), 0);
    for (uint32_t& x : k) x = uint32_t(rng());
    sets.push_back({"uniform_" + std::to_string(mo), k, uint32_t(std::max(1, mo / 10))});
    for (uint32_t& x : k) x = 0x3f800000u + uint32_t(rng() % 4096);  // one pass, many ties
    sets.push_back({"narrow_" + std::to_string(mo), k, uint32_t(std::max(1, mo / 10))});
    for (uint32_t& x : k) x = 0xc0000000u + uint32_t(rng() % 2);  // two values
    sets.push_back({"two_values_" + std::to_string(mo), k, uint32_t(mo - 1)});
  }
  sets.push_back({"all_equal", std::vector<uint32_t>(9000, 0x40490fdbu), 901});
  sets.push_back({"near_all_need", PivotKeys(16384, 300, 200, 13, 0, rng), 16383});
  // need = 1638; the first pass's pivot bin holds `pivot` keys, its rank 1638 - above.
  const int32_t mo = 16384;
  const uint32_t need = 1638;
  for (int32_t pivot : {1, 2, 100, 128, 129, 200, 1000, 4096, 4097, 6000}) {
    const int32_t above = int32_t(need) - std::max(1, pivot / 2);
    sets.push_back(
        {"pivot" + std::to_string(pivot), PivotKeys(mo, above, pivot, 13, 13, rng), need});
  }
  // Pivot bins of 300 / 4000 keys alike above bit same_lo: 8-bit passes over the candidates at
  // bits 5-12 and below (32-bit keys: lo 21, passes at 13-20, 5-12, 0-4).
  for (int same_lo : {13, 5, 0}) {
    for (int32_t pivot : {300, 4000}) {
      const int32_t above = int32_t(need) - pivot / 3;
      sets.push_back({"deep" + std::to_string(pivot) + "_same" + std::to_string(same_lo),
                      PivotKeys(mo, above, pivot, 21, same_lo, rng), need});
    }
  }
  // Longer than the register tail (the strided form only).
  std::vector<uint32_t> k(18751);
  for (uint32_t& x : k) x = 0x3f000000u + uint32_t(rng() % 100000);
  sets.push_back({"long_18751", k, 1875});
  sets.push_back({"long_pivot300", PivotKeys(18751, 1700, 300, 21, 5, rng), 1875});
  return sets;
}

// The key of the rank-th largest (1-based).
uint32_t KthLargest(std::vector<uint32_t> keys, uint32_t rank) {
  std::nth_element(keys.begin(), keys.begin() + (rank - 1), keys.end(), std::greater<>());
  return keys[rank - 1];
}

int64_t CountAtLeast(const std::vector<uint32_t>& keys, uint32_t v) {
  return std::count_if(keys.begin(), keys.end(), [v](uint32_t x) { return x >= v; });
}

TEST(SelectTailReferenceTest, TiesGoToTheLowestBlocks) {
  EXPECT_EQ(SelectTailReference({5, 7, 5, 9, 5}, 3), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(SelectTailReference({1, 1, 1, 1}, 2), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(SelectTailReference({3, 2, 1}, 1), (std::vector<int32_t>{0}));
}

TEST(SelectTailProbeTest, BadArgumentsAreRefused) {
  const std::vector<uint32_t> k(100, 1u);
  for (const SelectTailProbe& p :
       {SelectTailProbe{{1u}, 1}, SelectTailProbe{k, 0}, SelectTailProbe{k, 100},
        SelectTailProbe{std::vector<uint32_t>(16385, 1u), 5, SelectTailForm::kRegister}}) {
    EXPECT_EQ(RunSelectTailCuda(p).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

class SelectTailTest : public testing::CudaTest,
                       public ::testing::WithParamInterface<SelectTailForm> {};
class SelectTailHistogramTest : public testing::CudaTest {};

// The shift the selection leaves for the next step's histogram (NextHistShift): t - hint over
// 256-511 bins.
uint32_t HistShiftFor(uint32_t t, uint32_t hint) {
  const uint32_t d = t > hint ? t - hint : 0u;
  int bits = 0;
  while (bits < 32 && (d >> bits) != 0) ++bits;
  return uint32_t(std::max(bits - 9, 0));
}

TEST_P(SelectTailTest, EqualsReferenceOnEveryPath) {
  const SelectTailForm form = GetParam();
  int hinted = 0, declined = 0, by_hist = 0, hist_declined = 0;
  for (const KeySet& ks : KeySets()) {
    const uint32_t mo = uint32_t(ks.keys.size());
    if (form != SelectTailForm::kStrided && mo > 16384) continue;
    const std::vector<int32_t> want = SelectTailReference(ks.keys, ks.need);
    const uint32_t hint_rank = std::min(ks.need + ks.need / 4 + 32, mo);
    // The candidate form: the hint a real step would leave (hint_rank keys at or above it), so
    // there are enough candidates; then too few (declines); then everything a candidate (declines
    // past 4096).
    // The histogram form: the same candidates at the shift the last step would leave
    // (HistShiftFor), at 0 (one key a bin: the threshold lies past the bins) and 31 (every
    // candidate in bin 0), and candidates from the threshold itself (exactly need or a few
    // more: the pivot bin kept whole).
    std::vector<uint32_t> candidate_keys = {0};
    std::vector<uint32_t> shifts = {0};
    const uint32_t t = KthLargest(ks.keys, ks.need);
    if (form == SelectTailForm::kCandidate || form == SelectTailForm::kHistogram) {
      candidate_keys = {KthLargest(ks.keys, hint_rank), 0u};
      if (t != 0xffffffffu) candidate_keys.push_back(t + 1u);
    }
    if (form == SelectTailForm::kHistogram) {
      candidate_keys.push_back(t);
      shifts = {HistShiftFor(t, candidate_keys[0]), 0u, 31u};
    }
    for (uint32_t ck : candidate_keys) {
      for (uint32_t shift : shifts) {
        SelectTailProbe p{ks.keys, ks.need, form, hint_rank, ck, shift};
        if (form == SelectTailForm::kStrided || form == SelectTailForm::kStridedShared) {
          p.hint_rank = 0;
        }
        auto got = RunSelectTailCuda(p);
        ASSERT_TRUE(got.ok()) << got.status();
        ASSERT_EQ(got->ids, want) << ks.name << " (" << mo << " keys, need " << ks.need
                                  << ", candidates from " << ck << ", shift " << shift << ")";
        const int64_t cands = CountAtLeast(ks.keys, ck);
        const bool can = cands >= int64_t(ks.need) && cands <= 4096;
        // A candidate tail with fewer than hint_rank candidates leaves the lowest of them.
        if (p.hint_rank > 0 && (!got->from_candidates || cands >= int64_t(p.hint_rank))) {
          EXPECT_GE(CountAtLeast(ks.keys, got->hint_key), int64_t(p.hint_rank)) << ks.name;
        }
        if (form == SelectTailForm::kCandidate || form == SelectTailForm::kHistogram) {
          EXPECT_EQ(got->from_candidates, can) << ks.name << ": " << cands << " candidates";
          (got->from_candidates ? hinted : declined) += 1;
        }
        if (form == SelectTailForm::kHistogram) {
          const int want_outcome = HistTailOutcomeReference(p);
          EXPECT_EQ(got->from_histogram, want_outcome == 2)
              << ks.name << ": candidates from " << ck << ", shift " << shift;
          by_hist += int(got->from_histogram);
          hist_declined += int(want_outcome == 1);
          // The threshold key: exact, or the pivot bin's lower edge when the bin is kept whole
          // (never above the threshold, never below the hint).
          if (got->from_candidates) {
            EXPECT_LE(got->threshold_key, t) << ks.name;
            EXPECT_GE(got->threshold_key, ck) << ks.name;
            if (!got->from_histogram) {
              EXPECT_EQ(got->threshold_key, t) << ks.name;
            }
          }
        }
      }
    }
  }
  if (form == SelectTailForm::kCandidate) {
    EXPECT_GT(hinted, 10);
    EXPECT_GT(declined, 10);
  }
  if (form == SelectTailForm::kHistogram) {
    EXPECT_GT(by_hist, 10);
    EXPECT_GT(hist_declined, 10);
  }
}

// The histogram tail on spread keys at the shift the last step left: the pivot bin kept whole or
// ranked, at several thresholds between the hint and the bins' end.
TEST_F(SelectTailHistogramTest, SpreadKeysTakeTheHistogram) {
  std::mt19937 rng(5);
  std::vector<uint32_t> keys(16383);
  for (uint32_t& x : keys) x = 0x40000000u + uint32_t(rng() % (1u << 24));
  int whole = 0;
  for (uint32_t need : {1u, 2u, 100u, 1638u, 3000u}) {
    const uint32_t hint_rank = need + need / 4 + 32;
    const uint32_t ck = KthLargest(keys, hint_rank), t = KthLargest(keys, need);
    SelectTailProbe p{keys, need, SelectTailForm::kHistogram, hint_rank, ck, HistShiftFor(t, ck)};
    auto got = RunSelectTailCuda(p);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->ids, SelectTailReference(keys, need)) << "need " << need;
    EXPECT_TRUE(got->from_histogram) << "need " << need;
    EXPECT_GE(CountAtLeast(keys, got->hint_key), int64_t(hint_rank)) << "need " << need;
    whole += int(got->threshold_key != t);
  }
  EXPECT_GT(whole, 0) << "no pivot bin was kept whole";
}

INSTANTIATE_TEST_SUITE_P(Forms, SelectTailTest,
                         ::testing::Values(SelectTailForm::kRegister, SelectTailForm::kStrided,
                                           SelectTailForm::kStridedShared,
                                           SelectTailForm::kCandidate, SelectTailForm::kHistogram),
                         [](const ::testing::TestParamInfo<SelectTailForm>& info) {
                           return std::string(SelectTailFormName(info.param));
                         });

}  // namespace
}  // namespace resa::cuda
