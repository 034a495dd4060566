#include "runtime/core/sysinfo.h"

#include <sys/resource.h>

namespace resa {

uint64_t PeakRssBytes() {
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB.
}

}  // namespace resa
