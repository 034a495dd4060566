#include "runtime/engine/cuda/page_allocator.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace resa::cuda {
namespace {

constexpr int32_t kG = PageAllocator::kGroupPages;

using Table = std::vector<int32_t>;

// Grows `t` by one block; false (t unchanged) when the allocator has no free page.
bool Grow(PageAllocator& a, Table& t) {
  const int32_t p = a.Take(t);
  if (p < 0) return false;
  t.push_back(p);
  return true;
}

// Frees `t`'s pages in reverse order, as DeviceKvCache::Release does.
void Drop(PageAllocator& a, Table& t) {
  while (!t.empty()) {
    a.Free(t.back());
    t.pop_back();
  }
}

// Every complete run of kG blocks of `t` sits on one aligned group in order.
void ExpectAligned(const Table& t, const char* what) {
  for (size_t k = 0; k + kG <= t.size(); k += kG) {
    EXPECT_EQ(t[k] % kG, 0) << what << ": run " << k / kG << " starts at page " << t[k];
    for (int32_t i = 1; i < kG; ++i) {
      EXPECT_EQ(t[k + i], t[k] + i) << what << ": block " << k + i;
    }
  }
}

TEST(PageAllocator, FreshAllocatorHandsOutAscendingPagesToOneSequence) {
  // 37: one partial group and no complete one; kG * 3 + 5: a partial last group.
  for (int32_t n : {1, 16, 37, kG, kG + 1, kG * 3 + 5}) {
    PageAllocator a(n);
    EXPECT_EQ(a.num_pages(), n);
    EXPECT_EQ(a.free_pages(), n);
    Table t;
    for (int32_t i = 0; i < n; ++i) {
      ASSERT_TRUE(Grow(a, t));
      EXPECT_EQ(t.back(), i) << "n = " << n;
      EXPECT_EQ(a.free_pages(), n - 1 - i);
    }
    EXPECT_EQ(a.Take(t), -1) << "n = " << n;
    EXPECT_EQ(a.free_pages(), 0);
  }
}

TEST(PageAllocator, RoundRobinSequencesEachKeepAlignedGroups) {
  // Decode: 8 sequences each take one page per round (every 16 tokens).
  constexpr int kSeqs = 8, kRounds = 5 * kG + 3;
  PageAllocator a(kSeqs * 6 * kG);
  std::vector<Table> seqs(kSeqs);
  std::set<int32_t> seen;
  for (int r = 0; r < kRounds; ++r) {
    for (Table& t : seqs) {
      ASSERT_TRUE(Grow(a, t));
      EXPECT_TRUE(seen.insert(t.back()).second) << "page " << t.back() << " handed out twice";
    }
  }
  for (const Table& t : seqs) ExpectAligned(t, "round robin");
  EXPECT_EQ(a.free_pages(), kSeqs * 6 * kG - kSeqs * kRounds);
}

TEST(PageAllocator, PrefillsOfOddLengthsThenDecodeKeepAlignedGroups) {
  // Each sequence first takes a prompt's pages at once, then one page per round; the pool has
  // a fully free group for every run any sequence starts.
  const std::vector<int> prompt = {1, 5, kG, kG + 1, 2 * kG - 1, 3, 2 * kG + 8, 2};
  constexpr int kRounds = 2 * kG + 7;
  int groups = 0, prompt_pages = 0;
  for (int p : prompt) {
    groups += (p + kRounds + kG - 1) / kG;
    prompt_pages += p;
  }
  PageAllocator a(groups * kG + 9);  // a partial last group, never needed
  std::vector<Table> seqs(prompt.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int i = 0; i < prompt[s]; ++i) ASSERT_TRUE(Grow(a, seqs[s]));
  }
  for (int r = 0; r < kRounds; ++r) {
    for (Table& t : seqs) ASSERT_TRUE(Grow(a, t));
  }
  for (const Table& t : seqs) {
    ExpectAligned(t, "prefill + decode");
    // The incomplete last run is in order too.
    const size_t k = t.size() / kG * kG;
    for (size_t i = k; i < t.size(); ++i) EXPECT_EQ(t[i], t[k] + int32_t(i - k));
  }
  EXPECT_EQ(a.free_pages(), groups * kG + 9 - prompt_pages - int(prompt.size()) * kRounds);
}

TEST(PageAllocator, FreeTakeRoundTripsKeepFreePagesExact) {
  constexpr int32_t kPages = kG * 13 + 5;
  PageAllocator a(kPages);
  std::vector<Table> seqs(6);
  std::set<int32_t> used;
  std::mt19937 rng(7);
  // Phases of 2500 steps alternately grow (7 takes in 8) until the pool runs dry and shrink (2
  // in 8) until it is about empty, so sequences span several groups and Take meets exhaustion.
  int dry = 0;
  size_t longest = 0;
  for (int step = 0; step < 20000; ++step) {
    Table& t = seqs[rng() % seqs.size()];
    const bool grow = step / 2500 % 2 == 0;
    if (rng() % 8 < (grow ? 7u : 2u)) {
      const int32_t p = a.Take(t);
      if (used.size() == size_t(kPages)) {
        EXPECT_EQ(p, -1);
        ++dry;
      } else {
        ASSERT_GE(p, 0);
        ASSERT_LT(p, kPages);
        EXPECT_TRUE(used.insert(p).second) << "page " << p << " taken while in use";
        t.push_back(p);
        longest = std::max(longest, t.size());
      }
    } else if (!t.empty()) {
      // Shrink by a few blocks, last first.
      for (uint32_t k = 1 + rng() % 4; k > 0 && !t.empty(); --k) {
        used.erase(t.back());
        a.Free(t.back());
        t.pop_back();
      }
    }
    ASSERT_EQ(a.free_pages(), kPages - int32_t(used.size())) << "step " << step;
  }
  EXPECT_GT(dry, 0) << "the pool never ran dry";
  EXPECT_GE(longest, size_t(2 * kG)) << "no sequence spanned two groups";
  // A shrunk sequence grows back onto the page after its last one.
  Table t;
  PageAllocator b(4 * kG);
  for (int i = 0; i < kG + 5; ++i) ASSERT_TRUE(Grow(b, t));  // pages 0 .. kG + 4
  for (int i = 0; i < 3; ++i) {
    b.Free(t.back());
    t.pop_back();
  }
  EXPECT_EQ(b.free_pages(), 4 * kG - (kG + 2));
  EXPECT_EQ(b.Take(t), kG + 2);
  // Double frees and pages out of range are ignored: the counts stay exact, and group 1 (pages
  // kG .. kG + 2 in use) never looks fully free.
  for (int i = 0; i < kG; ++i) b.Free(kG + 14);
  b.Free(-1);
  b.Free(4 * kG);
  EXPECT_EQ(b.free_pages(), 4 * kG - (kG + 3));
  EXPECT_EQ(b.Take(Table{}), 2 * kG);
}

TEST(PageAllocator, ExhaustionHandsOutEveryPageOnceIncludingAPartialLastGroup) {
  // Pages, and the first pages of the three sequences: they start on complete groups while one
  // is fully free, then on the lowest free page (a partial group is never fully free).
  struct Case {
    int32_t pages;
    Table starts;
  };
  const std::vector<Case> cases = {
      {37, {0, 1, 2}},                // one partial group, no complete one
      {2 * kG + 5, {0, kG, 1}},       // groups 0 and 1 complete, group 2 of 5 pages
      {3 * kG + 5, {0, kG, 2 * kG}},  // groups 0 .. 2 complete, group 3 of 5 pages
  };
  for (const Case& c : cases) {
    const int32_t n = c.pages;
    PageAllocator a(n);
    std::vector<Table> seqs(3);
    std::vector<int> count(size_t(n), 0);
    int taken = 0;
    for (bool progress = true; progress;) {
      progress = false;
      for (Table& t : seqs) {
        if (!Grow(a, t)) continue;
        progress = true;
        ASSERT_GE(t.back(), 0);
        ASSERT_LT(t.back(), n);
        ++count[size_t(t.back())];
        ++taken;
      }
    }
    EXPECT_EQ(taken, n);
    for (int32_t p = 0; p < n; ++p) EXPECT_EQ(count[size_t(p)], 1) << "n = " << n << ", page " << p;
    EXPECT_EQ(a.free_pages(), 0);
    for (const Table& t : seqs) EXPECT_EQ(a.Take(t), -1);
    EXPECT_EQ((Table{seqs[0][0], seqs[1][0], seqs[2][0]}), c.starts) << "n = " << n;

    // Everything back, then all again: the partial group's pages are handed out last, in order.
    for (Table& t : seqs) Drop(a, t);
    EXPECT_EQ(a.free_pages(), n);
    Table one;
    for (int32_t i = 0; i < n; ++i) ASSERT_TRUE(Grow(a, one));
    for (int32_t i = 0; i < n; ++i) EXPECT_EQ(one[size_t(i)], i) << "n = " << n;
  }
}

TEST(PageAllocator, FreedSequenceGroupsAreReusedAsFullyFreeGroups) {
  PageAllocator a(4 * kG);
  Table x, y, z;
  for (int i = 0; i < kG; ++i) ASSERT_TRUE(Grow(a, x));  // group 0
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Grow(a, y));   // pages kG .. kG + 2 of group 1
  for (int i = 0; i < kG; ++i) ASSERT_TRUE(Grow(a, z));  // group 2
  EXPECT_EQ(x[0], 0);
  EXPECT_EQ(y[0], kG);
  EXPECT_EQ(z[0], 2 * kG);
  Drop(a, z);
  // Groups 2 and 3 are fully free; the lowest free page (kG + 3) is not taken for a new run.
  Table w;
  for (int i = 0; i < 2 * kG; ++i) ASSERT_TRUE(Grow(a, w));
  EXPECT_EQ(w[0], 2 * kG);
  EXPECT_EQ(w[kG], 3 * kG);
  ExpectAligned(w, "after free");
  // Group 1 becomes fully free only when y's last page is back.
  y.pop_back();
  a.Free(kG + 2);
  Table v;
  EXPECT_EQ(a.Take(v), kG + 2);  // no fully free group: the lowest free page
  a.Free(kG + 2);
  Drop(a, y);
  EXPECT_EQ(a.Take(v), kG);
}

TEST(PageAllocator, FragmentationFallsBackToTheLowestFreePage) {
  PageAllocator a(4 * kG);
  Table all;
  for (int i = 0; i < 4 * kG; ++i) ASSERT_TRUE(Grow(a, all));
  EXPECT_EQ(a.free_pages(), 0);
  for (int32_t p : {2 * kG + 8, kG + 4, 5}) a.Free(p);
  // No fully free group: a new run takes the lowest free page, and (a) fails every time after.
  Table t;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Grow(a, t));
  EXPECT_EQ(t, (Table{5, kG + 4, 2 * kG + 8}));
  EXPECT_EQ(a.Take(t), -1);

  // (a) beats a lower free page, but never crosses into the next group.
  for (int32_t p : {3, kG - 5, kG}) a.Free(p);
  EXPECT_EQ(a.Take(Table{kG - 8, kG - 7, kG - 6}), kG - 5);
  EXPECT_EQ(a.Take(Table{kG - 3, kG - 2, kG - 1}), 3);  // kG is free, but in group 1
  EXPECT_EQ(a.Take(Table{kG - 3, kG - 2, kG - 1}), kG);
  EXPECT_EQ(a.free_pages(), 0);
}

TEST(PageAllocator, LargePoolManySequences) {
  // A pool of 2^20 pages (16M tokens) served to 8 growing sequences until it runs dry; every
  // run of kG blocks is aligned since the sequences use whole groups.
  constexpr int32_t kPages = 1 << 20;
  PageAllocator a(kPages);
  std::vector<Table> seqs(8);
  for (Table& t : seqs) t.reserve(kPages / 8);
  for (int32_t r = 0; r < kPages / 8; ++r) {
    for (Table& t : seqs) ASSERT_TRUE(Grow(a, t));
  }
  EXPECT_EQ(a.free_pages(), 0);
  for (const Table& t : seqs) ExpectAligned(t, "large pool");
  // Sequence 3 started on group 3; once it is gone, a new sequence starts there.
  EXPECT_EQ(seqs[3][0], 3 * kG);
  Drop(a, seqs[3]);
  EXPECT_EQ(a.free_pages(), kPages / 8);
  Table t;
  EXPECT_EQ(a.Take(t), 3 * kG);
}

}  // namespace
}  // namespace resa::cuda
