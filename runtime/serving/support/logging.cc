#include "runtime/serving/support/logging.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>

#include <CLI/CLI.hpp>
#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace resa::serving {
namespace {

using json = nlohmann::json;

// Fields of the LogEvent call in progress on this thread. spdlog's default logger is synchronous,
// so the formatter runs on the logging thread while the pointer is set.
thread_local const json* t_fields = nullptr;

std::string Dump(const json& value) {
  // `replace`: invalid UTF-8 in a string becomes U+FFFD instead of throwing.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string IsoTime(int64_t unix_ms) {
  const std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03dZ", static_cast<int>(unix_ms % 1000));
  return buf;
}

bool NeedsQuotes(std::string_view s) {
  if (s.empty()) return true;
  for (const char c : s) {
    if (c == ' ' || c == '"' || c == '=' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return true;
    }
  }
  return false;
}

// Control characters of the message are escaped in text mode so that one event stays one line.
std::string EscapeControls(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

std::string TextValue(const json& value) {
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    return NeedsQuotes(s) ? Dump(value) : s;
  }
  return Dump(value);
}

class LineFormatter final : public spdlog::formatter {
 public:
  explicit LineFormatter(bool json) : json_(json) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const int64_t unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                msg.time.time_since_epoch())
                                .count();
    static const json kNoFields = json::object();
    const std::string line =
        FormatLogLine(json_, unix_ms, msg.level,
                      std::string_view(msg.payload.data(), msg.payload.size()),
                      t_fields != nullptr ? *t_fields : kNoFields);
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<LineFormatter>(json_);
  }

 private:
  bool json_;
};

}  // namespace

std::string FormatLogLine(bool json_mode, int64_t unix_ms, spdlog::level::level_enum level,
                          std::string_view message, const json& fields) {
  const spdlog::string_view_t level_name = spdlog::level::to_string_view(level);
  const std::string level_str(level_name.data(), level_name.size());
  json object_fields = json::object();
  if (fields.is_object()) {
    object_fields = fields;
  } else if (!fields.is_null()) {
    object_fields["fields"] = fields;
  }
  if (json_mode) {
    // ts, level, msg first (nlohmann's ordered_json keeps insertion order), then the fields.
    nlohmann::ordered_json line;
    line["ts"] = IsoTime(unix_ms);
    line["level"] = level_str;
    line["msg"] = std::string(message);
    for (const auto& [key, value] : object_fields.items()) {
      const bool reserved = key == "ts" || key == "level" || key == "msg";
      line[reserved ? "field_" + key : key] = value;
    }
    return line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  }
  std::string out = absl::StrCat(IsoTime(unix_ms), " ", level_str, " ", EscapeControls(message));
  for (const auto& [key, value] : object_fields.items()) {
    absl::StrAppend(&out, " ", EscapeControls(key), "=", TextValue(value));
  }
  return out;
}

absl::Status SetupLogging(std::string_view format, std::string_view level) {
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("--log-format must be text or json, not '", AsAbsl(format), "'"));
  }
  spdlog::level::level_enum lvl = spdlog::level::info;
  if (level == "warning") {
    lvl = spdlog::level::warn;
  } else {
    lvl = spdlog::level::from_str(std::string(level));
    // from_str maps unknown names to `off`; only "off" itself may mean off.
    if (lvl == spdlog::level::off && level != "off") {
      return absl::InvalidArgumentError(absl::StrCat(
          "--log-level must be trace, debug, info, warn, error, critical or off, not '",
          AsAbsl(level), "'"));
    }
  }
  auto logger = std::make_shared<spdlog::logger>(
      "resa", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_formatter(std::make_unique<LineFormatter>(format == "json"));
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

void LogEvent(spdlog::level::level_enum level, std::string_view message, const json& fields) {
  spdlog::logger* logger = spdlog::default_logger_raw();
  if (logger == nullptr || !logger->should_log(level)) return;
  t_fields = &fields;
  logger->log(level, spdlog::string_view_t(message.data(), message.size()));
  t_fields = nullptr;
}

void AddLoggingFlags(CLI::App& app, std::string& format, std::string& level) {
  if (format.empty()) format = "text";
  if (level.empty()) level = "info";
  app.add_option("--log-format", format, "log line format on stderr: text or json (JSON lines)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.add_option("--log-level", level,
                 "least severe level logged: trace, debug, info, warn, error, critical, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error", "critical",
                             "off"}))
      ->capture_default_str();
}

}  // namespace resa::serving
