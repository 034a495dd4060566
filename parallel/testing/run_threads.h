// In-process ranks for tests: one thread per communicator of a group (CreateFakeGroup).
// Header-only, so tests outside parallel/ (the engine's distributed tests) use it without the
// conformance suite.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "parallel/communicator.h"

namespace resa::testing {

// Runs body(comm) for every (non-null) rank of `comms`, one thread per rank, and joins them.
inline void RunThreads(std::vector<std::unique_ptr<Communicator>>& comms,
                       const std::function<void(Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (auto& c : comms) {
    if (c != nullptr) threads.emplace_back([&body, &c] { body(*c); });
  }
  for (auto& t : threads) t.join();
}

}  // namespace resa::testing
