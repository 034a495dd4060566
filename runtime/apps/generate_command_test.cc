// The stats line's split of a sparse or ReSA generation's decode time: every phase where the
// backend times them (CPU), and no made-up zeros where it does not (CUDA: a step is a graph).
#include "runtime/apps/generate_command.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/engine/generate.h"

namespace resa {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

GenerateStats Stats(bool phases_timed) {
  GenerateStats s;
  s.decode_seconds = 1.0;
  s.rectify_seconds = 0.125;
  s.forward.phases_timed = phases_timed;
  if (phases_timed) {
    s.forward.selection_seconds = 0.25;
    s.forward.sparse_attention_seconds = 0.375;
  }
  return s;
}

TEST(DecodeTimeSplitTest, TimedPhasesAddUpToTheDecodeTime) {
  EXPECT_EQ(DecodeTimeSplit(Stats(true)),
            "selection 0.250s, sparse attention 0.375s, rectification 0.125s, rest 0.250s");
}

TEST(DecodeTimeSplitTest, UntimedPhasesAreSaidToBeSoNotPrintedAsZero) {
  const std::string line = DecodeTimeSplit(Stats(false));
  EXPECT_THAT(line, HasSubstr("rectification 0.125s, rest of decode 0.875s"));
  EXPECT_THAT(line, HasSubstr("not timed apart"));
  EXPECT_THAT(line, Not(HasSubstr("selection 0")));
}

TEST(DecodeTimeSplitTest, RestNeverNegative) {
  GenerateStats s = Stats(true);
  s.decode_seconds = 0.5;  // phases measured on other clocks can exceed the step's own
  EXPECT_THAT(DecodeTimeSplit(s), HasSubstr("rest 0.000s"));
  s.forward.phases_timed = false;
  s.decode_seconds = 0.1;
  EXPECT_THAT(DecodeTimeSplit(s), HasSubstr("rest of decode 0.000s"));
}

}  // namespace
}  // namespace resa
