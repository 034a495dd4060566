// Host-side page allocator of the device KV cache (DeviceKvCache), plain C++ so it is tested
// without a GPU.
//
// The device stores block summaries in aligned groups of kGroupPages = 64 pages (group g = pages
// 64g .. 64g + 63; kernels/cuda/paged_kv_cuda.h, kSummaryGroup), one 128-byte line per (KV head,
// min or max, dim), and the selection kernel reads whole lines when a sequence's 64 blocks
// 64k .. 64k + 63 sit on one group in order (page_table[64k + i] == 64g + i; the blocks past a
// sequence's end need no page). Any other assignment stays correct (two-byte loads a block), so
// the allocator makes that the usual case rather than a guarantee: a sequence starting a run of
// kGroupPages blocks takes the first page of a fully free group, and inside a run the page after
// its last one.
#pragma once

#include <cstdint>
#include <set>
#include <vector>

namespace resa::cuda {

class PageAllocator {
 public:
  // Pages of one aligned group; equal to kSummaryGroup (checked where both are visible).
  static constexpr int32_t kGroupPages = 64;

  // Pages 0 .. num_pages - 1, all free. num_pages need not be a multiple of kGroupPages: the last
  // group may be partial (its pages are handed out, but never as a fully free group).
  explicit PageAllocator(int32_t num_pages);

  int32_t num_pages() const { return num_pages_; }
  // Exact count of free pages.
  int32_t free_pages() const { return int32_t(free_.size()); }

  // Marks used and returns a free page for local block j = page_table.size() of a sequence whose
  // pages are `page_table`. Preference, deterministic:
  //   (a) j % kGroupPages != 0: page_table.back() + 1 when free and in the group of
  //       page_table.back();
  //   (b) j % kGroupPages == 0: the first page of the lowest-numbered fully free group (all
  //       kGroupPages pages exist);
  //   (c) otherwise the lowest-numbered free page.
  // Precondition free_pages() > 0; -1 (nothing taken) when no page is free.
  int32_t Take(const std::vector<int32_t>& page_table);
  // Returns a used page. Precondition: `page` is in range and used; anything else is ignored so
  // the counts stay exact.
  void Free(int32_t page);

 private:
  // All kGroupPages pages of `group` exist.
  bool Complete(int32_t group) const {
    return int64_t(group + 1) * kGroupPages <= int64_t(num_pages_);
  }
  void MarkUsed(int32_t page);

  int32_t num_pages_ = 0;
  std::set<int32_t> free_;           // free pages
  std::set<int32_t> free_groups_;    // complete groups whose pages are all free
  std::vector<int32_t> group_free_;  // free pages per group
};

}  // namespace resa::cuda
