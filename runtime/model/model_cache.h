// Where models fetched by the project's scripts live: the user's model cache.
#pragma once

#include <string>

namespace resa {

// ${XDG_CACHE_HOME:-$HOME/.cache}/resa/models (scripts/common.sh's RESA_MODEL_DIR default).
std::string ModelCacheDir();

// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF), as scripts/fetch_model.sh names it.
inline constexpr char kDefaultModelFile[] = "SmolLM2-135M-Instruct.Q4_1.gguf";

// ModelCacheDir() + "/" + kDefaultModelFile.
std::string DefaultModelPath();

}  // namespace resa
