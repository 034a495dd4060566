#include "runtime/engine/cuda/page_allocator.h"

#include <algorithm>

namespace resa::cuda {

PageAllocator::PageAllocator(int32_t num_pages) : num_pages_(std::max(num_pages, 0)) {
  const int32_t groups = (num_pages_ + kGroupPages - 1) / kGroupPages;
  group_free_.resize(size_t(groups));
  // Ascending values inserted at the end: linear in num_pages.
  for (int32_t p = 0; p < num_pages_; ++p) free_.insert(free_.end(), p);
  for (int32_t g = 0; g < groups; ++g) {
    group_free_[size_t(g)] = std::min(kGroupPages, num_pages_ - g * kGroupPages);
    if (Complete(g)) free_groups_.insert(free_groups_.end(), g);
  }
}

void PageAllocator::MarkUsed(int32_t page) {
  free_.erase(page);
  const int32_t g = page / kGroupPages;
  if (group_free_[size_t(g)]-- == kGroupPages) free_groups_.erase(g);
}

int32_t PageAllocator::Take(const std::vector<int32_t>& page_table) {
  if (free_.empty()) return -1;
  int32_t page = -1;
  if (page_table.size() % kGroupPages != 0) {
    const int32_t next = page_table.back() + 1;
    if (next % kGroupPages != 0 && free_.count(next) != 0) page = next;
  } else if (!free_groups_.empty()) {
    page = *free_groups_.begin() * kGroupPages;
  }
  if (page < 0) page = *free_.begin();
  MarkUsed(page);
  return page;
}

void PageAllocator::Free(int32_t page) {
  if (page < 0 || page >= num_pages_ || !free_.insert(page).second) return;
  const int32_t g = page / kGroupPages;
  if (++group_free_[size_t(g)] == kGroupPages) free_groups_.insert(g);
}

}  // namespace resa::cuda
