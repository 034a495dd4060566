#include "runtime/model/model_cache.h"

#include <cstdlib>

namespace resa {

std::string ModelCacheDir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  std::string base;
  if (xdg != nullptr && *xdg != '\0') {
    base = xdg;
  } else {
    const char* home = std::getenv("HOME");
    base = std::string(home != nullptr ? home : ".") + "/.cache";
  }
  return base + "/resa/models";
}

std::string DefaultModelPath() { return ModelCacheDir() + "/" + kDefaultModelFile; }

}  // namespace resa
