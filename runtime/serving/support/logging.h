// Structured logs of the serving programs: one line per event on stderr, as text
//   2026-11-29T06:36:03.123Z info job finished job=j-12 tokens=64 reason="length"
// or as JSON lines (one object per line, for log shippers)
//   {"ts":"2026-11-29T06:36:03.123Z","level":"info","msg":"job finished","job":"j-12",...}
//
// SetupLogging installs a formatter on spdlog's default logger, so plain spdlog::info(...) calls
// of other code come out in the same format (without fields); LogEvent adds key/value fields.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <spdlog/common.h>

#include "absl/status/status.h"

namespace CLI {
class App;
}

namespace resa::serving {

// format: "text" or "json"; level: trace, debug, info, warn (warning), error, critical, off.
// Replaces spdlog's default logger with a stderr logger (flushed every line). INVALID_ARGUMENT
// for an unknown format or level. Call once at program start, before other threads log.
absl::Status SetupLogging(std::string_view format, std::string_view level);

// Logs `message` with `fields` (a JSON object; a non-object is logged under the key "fields").
// Text: strings are quoted when they hold spaces, quotes, '=' or control characters; other values
// are printed as JSON. JSON: ts, level and msg come first, then the fields in key order; keys
// named ts/level/msg in `fields` are prefixed with "field_". Invalid UTF-8 becomes U+FFFD.
void LogEvent(spdlog::level::level_enum level, std::string_view message,
              const nlohmann::json& fields = nlohmann::json::object());

// Registers --log-format text|json and --log-level (validated; defaults "text" and "info", or
// whatever `format` / `level` hold on entry).
void AddLoggingFlags(CLI::App& app, std::string& format, std::string& level);

// The line LogEvent would print (without the newline), for tests and for callers with their own
// sinks. `unix_ms` is the event time in milliseconds since the epoch.
std::string FormatLogLine(bool json, int64_t unix_ms, spdlog::level::level_enum level,
                          std::string_view message, const nlohmann::json& fields);

}  // namespace resa::serving
