#include "runtime/core/buffer.h"

#include <sys/mman.h>

namespace resa {

bool FloatBuffer::resize(size_t n) {
  std::free(data_);
  data_ = nullptr;
  size_ = 0;
  if (n == 0) return true;
  const size_t bytes = n * sizeof(float);
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
  if (p == nullptr) return false;
#ifdef MADV_HUGEPAGE
  if (align == kHuge) ::madvise(p, bytes, MADV_HUGEPAGE);  // advisory; failure is harmless
#endif
  data_ = static_cast<float*>(p);
  size_ = n;
  return true;
}

}  // namespace resa
