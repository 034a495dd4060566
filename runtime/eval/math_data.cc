#include "runtime/eval/math_data.h"

#include <algorithm>
#include <cctype>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/core/status.h"
#include "runtime/eval/math_answer.h"

namespace resa {

namespace {

constexpr std::string_view kInstruction =
    "Please reason step by step, and put your final answer within \\boxed{}.";

// A JSON value as text: strings as they are, numbers as written ("27.0" stays 27.0 -> "27.0"),
// null as empty.
std::string AsText(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump();
}

std::string Trimmed(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

std::string StripDollars(std::string s) {
  s = Trimmed(std::move(s));
  while (!s.empty() && s.front() == '$') s.erase(0, 1);
  while (!s.empty() && s.back() == '$') s.pop_back();
  return Trimmed(std::move(s));
}

absl::StatusOr<std::string> GoldFromJson(const nlohmann::json& j, std::string_view dataset) {
  const auto field = [&](const char* name) -> absl::StatusOr<nlohmann::json> {
    if (!j.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("no \"", name, "\" field"));
    }
    return j[name];
  };
  if (dataset == "gsm8k") {
    auto a = field("answer");
    if (!a.ok()) return a.status();
    const std::string s = AsText(*a);
    const size_t p = s.rfind("####");
    if (p == std::string::npos) return absl::InvalidArgumentError("\"answer\" has no ####");
    return Trimmed(s.substr(p + 4));
  }
  if (dataset == "minerva_math") {
    auto sol = field("solution");
    if (!sol.ok()) return sol.status();
    auto boxed = LastBoxed(AsText(*sol));
    if (!boxed) return absl::InvalidArgumentError("\"solution\" has no \\boxed{}");
    return *boxed;
  }
  if (dataset == "olympiadbench") {
    auto fa = field("final_answer");
    if (!fa.ok()) return fa.status();
    if (fa->is_array()) {
      if (fa->empty()) return absl::InvalidArgumentError("\"final_answer\" is empty");
      return StripDollars(AsText((*fa)[0]));
    }
    return StripDollars(AsText(*fa));
  }
  auto a = field("answer");
  if (!a.ok()) return a.status();
  return StripDollars(AsText(*a));
}

}  // namespace

const std::vector<std::string>& KnownMathDatasets() {
  static const std::vector<std::string> names = {"minerva_math", "gaokao2023en", "olympiadbench",
                                                 "aime24",       "amc23",        "gsm8k"};
  return names;
}

absl::StatusOr<std::string> RawGoldAnswer(std::string_view record_json, std::string_view dataset) {
  nlohmann::json j = nlohmann::json::parse(record_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  return GoldFromJson(j, dataset);
}

absl::StatusOr<std::vector<MathProblem>> LoadMathDataset(const std::string& dir,
                                                         const std::string& name) {
  const auto& known = KnownMathDatasets();
  if (std::find(known.begin(), known.end(), name) == known.end()) {
    return absl::InvalidArgumentError(absl::StrCat("--datasets: unknown dataset '", name,
                                                   "' (known: ", absl::StrJoin(known, ", "), ")"));
  }
  const std::string path = absl::StrCat(dir, "/", name, "/test.jsonl");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<MathProblem> problems;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = [&] { return absl::StrCat(path, ":", lineno, ": "); };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where(), "not a JSON object"));
    }
    MathProblem p;
    p.dataset = name;
    p.index = int(problems.size());
    for (const char* key : {"question", "problem"}) {
      if (j.contains(key) && j[key].is_string() && !j[key].get<std::string>().empty()) {
        p.question = Trimmed(j[key].get<std::string>());
        break;
      }
    }
    if (p.question.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where(), "no \"question\" or \"problem\""));
    }
    for (const char* key : {"id", "idx", "source"}) {
      if (j.contains(key) && !j[key].is_null()) {
        p.id = AsText(j[key]);
        break;
      }
    }
    if (p.id.empty()) p.id = std::to_string(p.index);
    auto gold = GoldFromJson(j, name);
    if (!gold.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where(), gold.status().message()));
    }
    p.gold_raw = *gold;
    p.gold = NormalizeAnswer(p.gold_raw, /*skip_units=*/name == "minerva_math");
    problems.push_back(std::move(p));
  }
  if (problems.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no problems"));
  return problems;
}

absl::StatusOr<PromptTemplate> ParsePromptTemplate(std::string_view name) {
  if (name == "r1") return PromptTemplate::kR1;
  if (name == "chat") return PromptTemplate::kChat;
  return absl::InvalidArgumentError(
      absl::StrCat("--prompt: unknown template '", AsAbsl(name), "' (known: r1, chat)"));
}

std::string R1Prompt(std::string_view question) {
  return absl::StrCat(AsAbsl(kInstruction), "\n", AsAbsl(question), "\n\n<think>\n");
}

std::string ChatInstruction(std::string_view question) {
  return absl::StrCat(AsAbsl(question), "\n", AsAbsl(kInstruction));
}

}  // namespace resa
