#include "runtime/serving/support/logging.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

namespace resa::serving {
namespace {

using json = nlohmann::json;

constexpr int64_t kMs = 1764398163123;  // 2025-11-29T06:36:03.123Z

TEST(FormatLogLine, JsonLineParsesAndEscapes) {
  const std::string msg = "say \"hi\"\nnext line\t\\";
  const json fields = {{"job", "j-1"},
                       {"text", "quote \" newline \n tab \t"},
                       {"tokens", 64},
                       {"ok", true},
                       {"msg", "shadowed"}};
  const std::string line = FormatLogLine(true, kMs, spdlog::level::warn, msg, fields);
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_EQ(line.rfind("{\"ts\":\"2025-11-29T06:36:03.123Z\",\"level\":\"warning\",\"msg\":", 0),
            0u)
      << line;
  const json parsed = json::parse(line);
  EXPECT_EQ(parsed["msg"], msg);
  EXPECT_EQ(parsed["text"], "quote \" newline \n tab \t");
  EXPECT_EQ(parsed["tokens"], 64);
  EXPECT_EQ(parsed["ok"], true);
  EXPECT_EQ(parsed["field_msg"], "shadowed");
}

TEST(FormatLogLine, InvalidUtf8IsReplacedNotThrown) {
  const std::string bad = "abc\xff\xfe" "def";
  std::string line;
  EXPECT_NO_THROW(line = FormatLogLine(true, kMs, spdlog::level::info, bad, {{"p", bad}}));
  const json parsed = json::parse(line);
  EXPECT_EQ(parsed["msg"], "abc\xEF\xBF\xBD\xEF\xBF\xBD" "def");
}

TEST(FormatLogLine, TextLineQuotesWhereNeeded) {
  const std::string line = FormatLogLine(
      false, kMs, spdlog::level::info, "job done\nsecond",
      {{"job", "j-2"}, {"reason", "stop string"}, {"n", 3}, {"ratio", 0.5}});
  EXPECT_EQ(line,
            "2025-11-29T06:36:03.123Z info job done\\nsecond job=j-2 n=3 ratio=0.5 "
            "reason=\"stop string\"");
}

TEST(SetupLogging, RejectsUnknownFormatAndLevel) {
  EXPECT_EQ(SetupLogging("xml", "info").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetupLogging("json", "loud").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(SetupLogging("text", "warning").ok());
  EXPECT_TRUE(SetupLogging("json", "off").ok());
}

// Runs `fn` with stderr redirected to a file and returns what it wrote.
template <typename Fn>
std::string CaptureStderr(Fn fn) {
  char path[] = "/tmp/resa_logging_test_XXXXXX";
  const int fd = mkstemp(path);
  std::fflush(stderr);
  const int saved = dup(2);
  dup2(fd, 2);
  fn();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::remove(path);
  return ss.str();
}

TEST(LogEvent, JsonModeWritesOneObjectPerLine) {
  ASSERT_TRUE(SetupLogging("json", "info").ok());
  const std::string out = CaptureStderr([] {
    LogEvent(spdlog::level::info, "job \"finished\"", {{"job", "j-3"}, {"tokens", 5}});
    LogEvent(spdlog::level::debug, "below the level");
    spdlog::error("plain spdlog call {}", 42);
  });
  std::istringstream lines(out);
  std::string line;
  std::vector<json> events;
  while (std::getline(lines, line)) events.push_back(json::parse(line));
  ASSERT_EQ(events.size(), 2u) << out;
  EXPECT_EQ(events[0]["msg"], "job \"finished\"");
  EXPECT_EQ(events[0]["job"], "j-3");
  EXPECT_EQ(events[0]["level"], "info");
  EXPECT_TRUE(std::regex_match(events[0]["ts"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
  EXPECT_EQ(events[1]["msg"], "plain spdlog call 42");
  EXPECT_EQ(events[1]["level"], "error");
  EXPECT_FALSE(events[1].contains("job"));  // fields do not leak into the next event
  ASSERT_TRUE(SetupLogging("text", "info").ok());
}

}  // namespace
}  // namespace resa::serving
